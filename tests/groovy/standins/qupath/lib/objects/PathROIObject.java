package qupath.lib.objects;

import qupath.lib.measurements.MeasurementList;
import qupath.lib.objects.classes.PathClass;
import qupath.lib.roi.interfaces.ROI;

/** An object with a ROI and a class; the only kind that can be unlocked. */
public abstract class PathROIObject extends PathObject {
    private ROI roi;
    private PathClass pathClass;
    private boolean locked;

    PathROIObject(ROI roi, PathClass pathClass, MeasurementList measurements) {
        super(measurements);
        this.roi = roi;
        this.pathClass = pathClass;
    }

    @Override
    public ROI getROI() { return roi; }

    public void setROI(ROI roi) {
        if (roi == null)
            throw new IllegalArgumentException("a ROI object needs a ROI");
        this.roi = roi;
    }

    @Override
    public PathClass getPathClass() { return pathClass; }

    @Override
    public void setPathClass(PathClass pathClass, double classProbability) { this.pathClass = pathClass; }

    @Override
    public boolean isLocked() { return locked; }

    @Override
    public void setLocked(boolean locked) { this.locked = locked; }
}
