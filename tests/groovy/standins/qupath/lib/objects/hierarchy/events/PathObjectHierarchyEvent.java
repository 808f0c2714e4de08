package qupath.lib.objects.hierarchy.events;

import qupath.lib.objects.PathObject;
import qupath.lib.objects.hierarchy.PathObjectHierarchy;

/** A change of a hierarchy (the stand-in hierarchy reports every change as a structure change). */
public class PathObjectHierarchyEvent {
    private final Object source;
    private final PathObjectHierarchy hierarchy;

    private PathObjectHierarchyEvent(Object source, PathObjectHierarchy hierarchy) {
        this.source = source;
        this.hierarchy = hierarchy;
    }

    public static PathObjectHierarchyEvent createStructureChangeEvent(Object source, PathObjectHierarchy hierarchy,
                                                                      PathObject parentObject) {
        return new PathObjectHierarchyEvent(source, hierarchy);
    }

    public Object getSource() { return source; }

    public PathObjectHierarchy getHierarchy() { return hierarchy; }

    public boolean isChanging() { return false; }
}
