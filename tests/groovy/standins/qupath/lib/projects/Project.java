package qupath.lib.projects;

import java.nio.file.Path;
import java.util.Collection;
import java.util.List;
import qupath.lib.images.ImageData;
import qupath.lib.objects.classes.PathClass;

/** A project (an interface in QuPath; its implementation, DefaultProject, is not public). */
public interface Project<T> {
    Path getPath();

    List<PathClass> getPathClasses();

    boolean setPathClasses(Collection<? extends PathClass> pathClasses);

    ProjectImageEntry<T> getEntry(ImageData<T> imageData);

    void syncChanges() throws java.io.IOException;
}
