package qupath.lib.scripting;

import java.awt.image.BufferedImage;
import java.util.Collection;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import qupath.lib.images.ImageData;
import qupath.lib.images.servers.ImageServer;
import qupath.lib.objects.PathObject;
import qupath.lib.objects.classes.PathClass;
import qupath.lib.objects.hierarchy.PathObjectHierarchy;
import qupath.lib.projects.Project;
import qupath.lib.projects.ProjectImageEntry;

/**
 * The static scripting methods, acting on the current image and project of the calling thread, as in QuPath:
 * "Run for project" (and the harness) sets them with setBatchProjectAndImage on the thread that runs the script;
 * another thread sees none. Only methods that QuPath 0.4-0.7 all have, none deprecated in any of them.
 */
public class QP {
    private static final Map<Thread, ImageData<BufferedImage>> BATCH_IMAGE = new ConcurrentHashMap<>();
    private static final Map<Thread, Project<BufferedImage>> BATCH_PROJECT = new ConcurrentHashMap<>();

    public static void setBatchProjectAndImage(Project<BufferedImage> project, ImageData<BufferedImage> imageData) {
        Thread thread = Thread.currentThread();
        if (project == null)
            BATCH_PROJECT.remove(thread);
        else
            BATCH_PROJECT.put(thread, project);
        if (imageData == null)
            BATCH_IMAGE.remove(thread);
        else
            BATCH_IMAGE.put(thread, imageData);
    }

    public static void resetBatchProjectAndImage() { setBatchProjectAndImage(null, null); }

    public static ImageData<BufferedImage> getCurrentImageData() { return BATCH_IMAGE.get(Thread.currentThread()); }

    public static Project<BufferedImage> getProject() { return BATCH_PROJECT.get(Thread.currentThread()); }

    public static ProjectImageEntry<BufferedImage> getProjectEntry() {
        Project<BufferedImage> project = getProject();
        ImageData<BufferedImage> imageData = getCurrentImageData();
        if (project == null || imageData == null)
            return null;
        return project.getEntry(imageData);
    }

    public static PathObjectHierarchy getCurrentHierarchy() {
        ImageData<?> imageData = getCurrentImageData();
        return imageData == null ? null : imageData.getHierarchy();
    }

    public static ImageServer<?> getCurrentServer() {
        ImageData<?> imageData = getCurrentImageData();
        return imageData == null ? null : imageData.getServer();
    }

    public static Collection<PathObject> getAnnotationObjects() {
        PathObjectHierarchy hierarchy = getCurrentHierarchy();
        return hierarchy == null ? java.util.List.of() : hierarchy.getAnnotationObjects();
    }

    public static PathClass getPathClass(String name) { return PathClass.fromString(name); }

    public static PathClass getPathClass(String name, Integer rgb) { return PathClass.fromString(name, rgb); }

    public static void addObjects(Collection<PathObject> pathObjects) {
        PathObjectHierarchy hierarchy = getCurrentHierarchy();
        if (hierarchy != null)
            hierarchy.addObjects(pathObjects);
    }

    public static void resolveHierarchy() {
        PathObjectHierarchy hierarchy = getCurrentHierarchy();
        if (hierarchy != null)
            hierarchy.resolveHierarchy();
    }

    public static void fireHierarchyUpdate() {
        PathObjectHierarchy hierarchy = getCurrentHierarchy();
        if (hierarchy != null)
            hierarchy.fireHierarchyChangedEvent(QP.class);
    }
}
