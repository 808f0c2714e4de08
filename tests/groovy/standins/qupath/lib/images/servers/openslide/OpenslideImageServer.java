package qupath.lib.images.servers.openslide;

import java.net.URI;
import java.util.Collection;
import java.util.List;
import qupath.lib.images.servers.ImageServer;
import qupath.lib.images.servers.ImageServerMetadata;
import qupath.lib.images.servers.PixelCalibration;

/** A server for one slide file, named like QuPath's OpenSlide server (the script sends the class name). */
public class OpenslideImageServer implements ImageServer<Object> {
    private final URI uri;
    private final int width;
    private final int height;
    private final PixelCalibration calibration;
    private final ImageServerMetadata metadata;

    public OpenslideImageServer(URI uri, int width, int height, double pixelSizeMicrons, String name) {
        this.uri = uri;
        this.width = width;
        this.height = height;
        this.calibration = new PixelCalibration(pixelSizeMicrons);
        this.metadata = new ImageServerMetadata(name);
    }

    @Override
    public Collection<URI> getURIs() { return List.of(uri); }

    @Override
    public int getWidth() { return width; }

    @Override
    public int getHeight() { return height; }

    @Override
    public PixelCalibration getPixelCalibration() { return calibration; }

    @Override
    public ImageServerMetadata getMetadata() { return metadata; }

    @Override
    public String getServerType() { return "OpenSlide"; }

    @Override
    public String getPath() { return "OpenslideImageServer: " + uri; }
}
