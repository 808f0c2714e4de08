package qupath.lib.images;

import qupath.lib.images.servers.ImageServer;
import qupath.lib.objects.hierarchy.PathObjectHierarchy;

/** An image: its server and its hierarchy. */
public class ImageData<T> {
    private final ImageServer<T> server;
    private final PathObjectHierarchy hierarchy;

    public ImageData(ImageServer<T> server, PathObjectHierarchy hierarchy) {
        this.server = server;
        this.hierarchy = hierarchy == null ? new PathObjectHierarchy() : hierarchy;
    }

    public ImageData(ImageServer<T> server) { this(server, null); }

    public ImageServer<T> getServer() { return server; }

    public PathObjectHierarchy getHierarchy() { return hierarchy; }
}
