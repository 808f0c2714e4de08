package qupath.lib.images;

import qupath.lib.images.servers.ImageServer;
import qupath.lib.objects.hierarchy.PathObjectHierarchy;

public class ImageData<T> {
    private final ImageServer<T> server;
    private final PathObjectHierarchy hierarchy;

    public ImageData(ImageServer<T> server, PathObjectHierarchy hierarchy) {
        this.server = server;
        this.hierarchy = hierarchy;
    }

    public ImageServer<T> getServer() { return server; }

    public PathObjectHierarchy getHierarchy() { return hierarchy; }
}
