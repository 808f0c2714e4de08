package qupath.lib.objects.hierarchy;

import java.util.ArrayList;
import java.util.Collection;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.UUID;
import qupath.lib.objects.PathObject;
import qupath.lib.objects.PathObjects;

/** A tree of objects under a root, with the calls the script makes counted. */
public class PathObjectHierarchy {
    private final PathObject root = new PathObject(UUID.randomUUID(), "root", null);
    private final PathObjectSelectionModel selectionModel = new PathObjectSelectionModel();
    public int resolveCalls;
    public int changedEvents;

    public PathObject getRootObject() { return root; }

    public PathObjectSelectionModel getSelectionModel() { return selectionModel; }

    /** All objects, the root first, like QuPath's. */
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

    public synchronized boolean addObjects(Collection<? extends PathObject> objects) {
        for (PathObject object : objects)
            PathObjects.attach(root, object);
        return !objects.isEmpty();
    }

    public synchronized boolean removeObjects(Collection<? extends PathObject> objects, boolean keepChildren) {
        Set<PathObject> gone = new HashSet<>(objects);
        for (PathObject object : new ArrayList<>(objects)) {
            PathObject parent = object.getParent();
            if (parent == null)
                continue;
            PathObjects.detach(parent, object);
            for (PathObject child : object.getChildObjects()) {
                PathObjects.detach(object, child);
                if (keepChildren && !gone.contains(child))
                    PathObjects.attach(parent, child);
            }
        }
        return !objects.isEmpty();
    }

    public synchronized void resolveHierarchy() { resolveCalls++; }

    public void fireHierarchyChangedEvent(Object source) { changedEvents++; }
}
