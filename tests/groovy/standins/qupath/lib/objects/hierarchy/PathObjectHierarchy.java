package qupath.lib.objects.hierarchy;

import java.util.ArrayList;
import java.util.Collection;
import java.util.Comparator;
import java.util.HashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.CopyOnWriteArrayList;
import org.locationtech.jts.algorithm.locate.SimplePointInAreaLocator;
import org.locationtech.jts.geom.Coordinate;
import org.locationtech.jts.geom.Geometry;
import org.locationtech.jts.geom.Location;
import qupath.lib.objects.PathObject;
import qupath.lib.objects.PathRootObject;
import qupath.lib.objects.hierarchy.events.PathObjectHierarchyEvent;
import qupath.lib.objects.hierarchy.events.PathObjectHierarchyListener;
import qupath.lib.objects.hierarchy.events.PathObjectSelectionModel;
import qupath.lib.roi.interfaces.ROI;

/**
 * The objects of an image, under one root. Final, as QuPath's. The rules the scripts meet are QuPath's:
 * <ul>
 * <li>{@code addObjects} puts objects directly under the root, with the children they already have;</li>
 * <li>{@code removeObjects(objects, true)} re-adds the surviving children of removed objects under the root;</li>
 * <li>{@code insertPathObject} places an object under the smallest annotation that covers it (a detection: that
 * contains its centroid), and moves the children of that parent that lie inside the new object under it;</li>
 * <li>{@code resolveHierarchy} removes every annotation (keeping children) and inserts them again, largest first:
 * re-parenting by geometry across all objects of the image, whatever made them.</li>
 * </ul>
 * Geometry tests use JTS, as QuPath does; the tile cache and TMA cores of QuPath are left out.
 */
public final class PathObjectHierarchy {
    private static final Comparator<PathObject> SMALLEST_FIRST = Comparator
            .comparingDouble((PathObject p) -> p.hasROI() ? p.getROI().getArea() : Double.POSITIVE_INFINITY)
            .thenComparing(Comparator.comparingInt(PathObject::getLevel).reversed())
            .thenComparing(p -> p.getID().toString());

    private final PathObject root = new PathRootObject();
    private final PathObjectSelectionModel selectionModel = new PathObjectSelectionModel();
    private final List<PathObjectHierarchyListener> listeners = new CopyOnWriteArrayList<>();

    public PathObjectHierarchy() {}

    public PathObject getRootObject() { return root; }

    public PathObjectSelectionModel getSelectionModel() { return selectionModel; }

    public void addListener(PathObjectHierarchyListener listener) { listeners.add(listener); }

    public void removeListener(PathObjectHierarchyListener listener) { listeners.remove(listener); }

    /** Every object, the root first, each parent before its children. */
    public synchronized List<PathObject> getFlattenedObjectList(List<PathObject> list) {
        List<PathObject> out = list == null ? new ArrayList<>() : list;
        collect(root, out);
        return out;
    }

    private static void collect(PathObject object, List<PathObject> out) {
        out.add(object);
        for (PathObject child : object.getChildObjects())
            collect(child, out);
    }

    public synchronized Collection<PathObject> getAnnotationObjects() {
        List<PathObject> out = new ArrayList<>();
        for (PathObject object : getFlattenedObjectList(null))
            if (object.isAnnotation())
                out.add(object);
        return out;
    }

    public synchronized Collection<PathObject> getDetectionObjects() {
        List<PathObject> out = new ArrayList<>();
        for (PathObject object : getFlattenedObjectList(null))
            if (object.isDetection())
                out.add(object);
        return out;
    }

    public synchronized boolean addObjects(Collection<? extends PathObject> pathObjects) {
        boolean changes = false;
        for (PathObject pathObject : new ArrayList<>(pathObjects)) {
            root.addChildObject(pathObject);
            changes = true;
        }
        if (changes)
            fireHierarchyChangedEvent(root);
        return changes;
    }

    public synchronized void removeObjects(Collection<? extends PathObject> pathObjects, boolean keepChildren) {
        if (pathObjects.isEmpty())
            return;
        List<PathObject> sorted = new ArrayList<>(pathObjects);
        sorted.sort(Comparator.comparingInt(PathObject::getLevel).reversed());
        Map<PathObject, List<PathObject>> byParent = new HashMap<>();
        for (PathObject pathObject : sorted)
            if (pathObject.getParent() != null)
                byParent.computeIfAbsent(pathObject.getParent(), k -> new ArrayList<>()).add(pathObject);
        if (byParent.isEmpty())
            return;
        Set<PathObject> childrenToKeep = new LinkedHashSet<>();
        for (Map.Entry<PathObject, List<PathObject>> entry : byParent.entrySet()) {
            entry.getKey().removeChildObjects(entry.getValue());
            if (keepChildren)
                for (PathObject removed : entry.getValue())
                    childrenToKeep.addAll(removed.getChildObjects());
        }
        childrenToKeep.removeAll(pathObjects);
        for (PathObject child : childrenToKeep)
            if (child.hasROI())
                root.addChildObject(child);
        fireHierarchyChangedEvent(this);
    }

    public synchronized boolean insertPathObject(PathObject pathObject, boolean fireChangeEvents) {
        boolean changed = insert(pathObject);
        if (fireChangeEvents)
            fireHierarchyChangedEvent(this, pathObject);
        return changed;
    }

    public synchronized boolean insertPathObjects(Collection<? extends PathObject> pathObjects) {
        List<PathObject> objects = new ArrayList<>(pathObjects);
        if (objects.isEmpty())
            return false;
        removeObjects(objects, true);
        objects.sort(SMALLEST_FIRST.reversed());
        for (PathObject pathObject : objects)
            insert(pathObject);
        fireHierarchyChangedEvent(this);
        return true;
    }

    public synchronized void resolveHierarchy() {
        Collection<PathObject> annotations = getAnnotationObjects();
        if (!annotations.isEmpty())
            insertPathObjects(annotations);
    }

    private boolean insert(PathObject pathObject) {
        ROI roi = pathObject.getROI();
        List<PathObject> candidates = new ArrayList<>();
        for (PathObject annotation : getAnnotationObjects())
            if (annotation != pathObject && annotation.hasROI() && !isDescendant(annotation, pathObject)
                    && annotation.getROI().getGeometry().getEnvelopeInternal()
                    .intersects(roi.getGeometry().getEnvelopeInternal()))
                candidates.add(annotation);
        candidates.sort(SMALLEST_FIRST);
        candidates.add(root);
        for (PathObject parent : candidates) {
            boolean fits = parent == root || (pathObject.isDetection()
                    ? containsCentroid(parent.getROI(), roi) : covers(parent.getROI(), roi));
            if (!fits)
                continue;
            if (pathObject.getParent() == parent)
                return false;
            List<PathObject> previousChildren = pathObject.isDetection() ? List.of()
                    : new ArrayList<>(parent.getChildObjects());
            parent.addChildObject(pathObject);
            List<PathObject> inside = new ArrayList<>();
            if (roi.isArea() && !roi.isEmpty())
                for (PathObject child : previousChildren)
                    if (child != pathObject && (child.isDetection() ? containsCentroid(roi, child.getROI())
                            : covers(roi, child.getROI())))
                        inside.add(child);
            pathObject.addChildObjects(inside);
            return true;
        }
        return true;
    }

    private static boolean isDescendant(PathObject object, PathObject ancestor) {
        for (PathObject p = object.getParent(); p != null; p = p.getParent())
            if (p == ancestor)
                return true;
        return false;
    }

    private static boolean covers(ROI parent, ROI child) {
        if (parent == null || child == null || parent.isEmpty() || child.isEmpty())
            return false;
        return parent.getGeometry().covers(child.getGeometry());
    }

    private static boolean containsCentroid(ROI parent, ROI child) {
        if (parent == null || child == null || parent.isEmpty())
            return false;
        Geometry area = parent.getGeometry();
        Coordinate centroid = new Coordinate(child.getCentroidX(), child.getCentroidY());
        return SimplePointInAreaLocator.locate(centroid, area) != Location.EXTERIOR;
    }

    public void fireHierarchyChangedEvent(Object source) { fireHierarchyChangedEvent(source, root); }

    public void fireHierarchyChangedEvent(Object source, PathObject pathObject) {
        PathObjectHierarchyEvent event = PathObjectHierarchyEvent.createStructureChangeEvent(source, this, pathObject);
        for (PathObjectHierarchyListener listener : listeners)
            listener.hierarchyChanged(event);
    }
}
