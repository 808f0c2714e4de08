package qupath.lib.objects;

import qupath.lib.measurements.MeasurementList;
import qupath.lib.objects.classes.PathClass;
import qupath.lib.roi.interfaces.ROI;

/** A tile: a detection (float32 measurements). */
public class PathTileObject extends PathDetectionObject {
    public PathTileObject() { this(null); }

    protected PathTileObject(ROI roi) { this(roi, null, null); }

    PathTileObject(ROI roi, PathClass pathClass, MeasurementList measurements) { super(roi, pathClass, measurements); }
}
