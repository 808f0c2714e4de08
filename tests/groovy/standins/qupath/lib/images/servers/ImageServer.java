package qupath.lib.images.servers;

import java.net.URI;
import java.util.Collection;

/** The part of QuPath's ImageServer the scripts read (an interface; QuPath's servers implement far more). */
public interface ImageServer<T> extends AutoCloseable {
    String getPath();

    Collection<URI> getURIs();

    int getWidth();

    int getHeight();

    String getServerType();

    ImageServerMetadata getMetadata();

    default PixelCalibration getPixelCalibration() { return getMetadata().getPixelCalibration(); }
}
