package qupath.lib.scripting;

import java.util.ArrayList;
import java.util.Collection;
import java.util.List;
import qupath.lib.images.ImageData;
import qupath.lib.images.servers.ImageServer;
import qupath.lib.objects.PathObject;
import qupath.lib.objects.classes.PathClass;
import qupath.lib.objects.hierarchy.PathObjectHierarchy;
import qupath.lib.projects.Project;
import qupath.lib.projects.ProjectImageEntry;

/** The static scripting methods the script calls, acting on the "current" image the harness sets. */
public class QP {
    private static ImageData<?> imageData;
    private static Project<?> project;
    private static ProjectImageEntry<?> entry;
    /** Stand-in only: System.nanoTime() of the last addObjects call. */
    public static volatile long lastAddNanos;

    /** Stand-in only: what "Run for project" does before each image (fresh ImageData, nothing selected). */
    public static synchronized void setCurrent(ImageData<?> data, Project<?> currentProject,
                                               ProjectImageEntry<?> currentEntry) {
        imageData = data;
        project = currentProject;
        entry = currentEntry;
    }

    public static ImageData<?> getCurrentImageData() { return imageData; }

    public static ImageServer<?> getCurrentServer() { return imageData == null ? null : imageData.getServer(); }

    public static PathObjectHierarchy getCurrentHierarchy() {
        return imageData == null ? null : imageData.getHierarchy();
    }

    public static Project<?> getProject() { return project; }

    public static ProjectImageEntry<?> getProjectEntry() { return entry; }

    public static List<PathObject> getAnnotationObjects() {
        List<PathObject> out = new ArrayList<>();
        PathObjectHierarchy hierarchy = getCurrentHierarchy();
        if (hierarchy != null)
            for (PathObject object : hierarchy.getFlattenedObjectList(null))
                if (object.isAnnotation())
                    out.add(object);
        return out;
    }

    public static PathClass getPathClass(String name) { return PathClass.fromString(name); }

    public static void addObjects(Collection<? extends PathObject> objects) {
        PathObjectHierarchy hierarchy = getCurrentHierarchy();
        if (hierarchy == null)
            return;
        hierarchy.addObjects(objects);
        lastAddNanos = System.nanoTime();
    }

    public static void removeObjects(Collection<PathObject> objects, boolean keepChildren) {
        PathObjectHierarchy hierarchy = getCurrentHierarchy();
        if (hierarchy != null)
            hierarchy.removeObjects(objects, keepChildren);
    }

    public static void resolveHierarchy() {
        PathObjectHierarchy hierarchy = getCurrentHierarchy();
        if (hierarchy != null)
            hierarchy.resolveHierarchy();
    }

    public static void fireHierarchyUpdate() {
        PathObjectHierarchy hierarchy = getCurrentHierarchy();
        if (hierarchy != null)
            hierarchy.fireHierarchyChangedEvent(null);
    }
}
