package qupath.lib.objects.hierarchy;

import java.util.Collection;
import java.util.LinkedHashSet;
import java.util.Set;
import qupath.lib.objects.PathObject;

/** The selected objects of a hierarchy (QuPath's selection model). */
public class PathObjectSelectionModel {
    private final Set<PathObject> selected = new LinkedHashSet<>();

    public Set<PathObject> getSelectedObjects() { return new LinkedHashSet<>(selected); }

    public void setSelectedObjects(Collection<? extends PathObject> objects, PathObject primary) {
        selected.clear();
        selected.addAll(objects);
    }
}
