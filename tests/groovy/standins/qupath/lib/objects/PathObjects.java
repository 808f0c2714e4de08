package qupath.lib.objects;

/** Tree edits for the stand-in hierarchy (QuPath's PathObjects makes objects; this one only links them). */
public final class PathObjects {
    private PathObjects() {}

    public static void attach(PathObject parent, PathObject child) {
        if (child.getParent() != null)
            child.getParent().detach(child);
        parent.attach(child);
    }

    public static void detach(PathObject parent, PathObject child) { parent.detach(child); }
}
