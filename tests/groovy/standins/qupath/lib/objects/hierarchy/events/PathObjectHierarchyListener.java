package qupath.lib.objects.hierarchy.events;

/** Told of every change of a hierarchy. */
public interface PathObjectHierarchyListener {
    void hierarchyChanged(PathObjectHierarchyEvent event);
}
