package qupath.lib.objects.hierarchy.events;

import java.util.Collection;
import java.util.Collections;
import java.util.LinkedHashSet;
import java.util.Set;
import qupath.lib.objects.PathObject;

/** The selected objects of a hierarchy. */
public class PathObjectSelectionModel {
    private final Set<PathObject> selected = new LinkedHashSet<>();
    private PathObject primary;

    public synchronized Set<PathObject> getSelectedObjects() {
        return Collections.unmodifiableSet(new LinkedHashSet<>(selected));
    }

    public synchronized PathObject getSelectedObject() { return primary; }

    public synchronized void setSelectedObjects(Collection<? extends PathObject> pathObjects,
                                                PathObject primaryObject) {
        selected.clear();
        selected.addAll(pathObjects);
        primary = primaryObject != null ? primaryObject : selected.isEmpty() ? null : selected.iterator().next();
    }
}
