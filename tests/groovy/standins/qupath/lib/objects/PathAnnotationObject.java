package qupath.lib.objects;

import qupath.lib.measurements.MeasurementList;
import qupath.lib.objects.classes.PathClass;
import qupath.lib.roi.interfaces.ROI;

/** An annotation: measurements in double precision. */
public class PathAnnotationObject extends PathROIObject {
    public PathAnnotationObject() { super(null, null, null); }

    PathAnnotationObject(ROI roi, PathClass pathClass, MeasurementList measurements) {
        super(roi, pathClass, measurements);
    }
}
