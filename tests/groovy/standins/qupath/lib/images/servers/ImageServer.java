package qupath.lib.images.servers;

import java.net.URI;
import java.util.Collection;

/** The part of QuPath's ImageServer the script uses. */
public interface ImageServer<T> {
    Collection<URI> getURIs();

    int getWidth();

    int getHeight();

    PixelCalibration getPixelCalibration();

    ImageServerMetadata getMetadata();

    String getServerType();

    String getPath();
}
