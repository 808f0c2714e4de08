package qupath.lib.projects;

public class ProjectImageEntry<T> {
    private final String imageName;

    public ProjectImageEntry(String imageName) { this.imageName = imageName; }

    public String getImageName() { return imageName; }
}
