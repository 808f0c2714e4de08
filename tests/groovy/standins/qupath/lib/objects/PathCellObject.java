package qupath.lib.objects;

import qupath.lib.measurements.MeasurementList;
import qupath.lib.objects.classes.PathClass;
import qupath.lib.roi.interfaces.ROI;

/** A cell: a detection with a nucleus. */
public class PathCellObject extends PathDetectionObject {
    private final ROI nucleus;

    public PathCellObject() { this(null, null, null, null); }

    PathCellObject(ROI roi, ROI nucleus, PathClass pathClass, MeasurementList measurements) {
        super(roi, pathClass, measurements);
        this.nucleus = nucleus;
    }

    public ROI getNucleusROI() { return nucleus; }
}
