package qupath.lib.projects;

/** An image of a project (an interface in QuPath). */
public interface ProjectImageEntry<T> {
    String getImageName();
}
