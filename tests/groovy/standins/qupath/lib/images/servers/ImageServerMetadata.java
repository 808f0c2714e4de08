package qupath.lib.images.servers;

public class ImageServerMetadata {
    private final String name;

    public ImageServerMetadata(String name) { this.name = name; }

    public String getName() { return name; }
}
