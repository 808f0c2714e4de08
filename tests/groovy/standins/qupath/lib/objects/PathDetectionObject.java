package qupath.lib.objects;

import qupath.lib.measurements.MeasurementList;
import qupath.lib.objects.classes.PathClass;
import qupath.lib.roi.interfaces.ROI;

/** A detection: measurements stored as float32. */
public class PathDetectionObject extends PathROIObject {
    public PathDetectionObject() { this(null, null, null); }

    protected PathDetectionObject(ROI roi, PathClass pathClass) { this(roi, pathClass, null); }

    PathDetectionObject(ROI roi, PathClass pathClass, MeasurementList measurements) {
        super(roi, pathClass, measurements);
    }

    @Override
    MeasurementList createEmptyMeasurementList() {
        return qupath.lib.measurements.MeasurementListFactory.createMeasurementList(0,
                MeasurementList.MeasurementListType.FLOAT);
    }
}
