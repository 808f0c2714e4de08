package qupath.lib.objects;

import qupath.lib.objects.classes.PathClass;
import qupath.lib.roi.interfaces.ROI;

/** The root of a hierarchy: no ROI, no class. */
public class PathRootObject extends PathObject {
    public PathRootObject() {}

    @Override
    public ROI getROI() { return null; }

    @Override
    public PathClass getPathClass() { return null; }

    @Override
    public void setPathClass(PathClass pathClass, double classProbability) {
        throw new UnsupportedOperationException("Root object cannot have a classification!");
    }
}
