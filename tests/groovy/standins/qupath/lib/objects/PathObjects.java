package qupath.lib.objects;

import qupath.lib.measurements.MeasurementList;
import qupath.lib.objects.classes.PathClass;
import qupath.lib.roi.interfaces.ROI;

/** Makes objects (QuPath's factory; the object classes have no public constructor taking a ROI). */
public class PathObjects {
    private PathObjects() {}

    public static PathObject createAnnotationObject(ROI roi) { return createAnnotationObject(roi, null, null); }

    public static PathObject createAnnotationObject(ROI roi, PathClass pathClass) {
        return createAnnotationObject(roi, pathClass, null);
    }

    public static PathObject createAnnotationObject(ROI roi, PathClass pathClass, MeasurementList measurements) {
        return new PathAnnotationObject(roi, pathClass, measurements);
    }

    public static PathObject createDetectionObject(ROI roi) { return createDetectionObject(roi, null, null); }

    public static PathObject createDetectionObject(ROI roi, PathClass pathClass) {
        return createDetectionObject(roi, pathClass, null);
    }

    public static PathObject createDetectionObject(ROI roi, PathClass pathClass, MeasurementList measurements) {
        return new PathDetectionObject(roi, pathClass, measurements);
    }

    public static PathObject createTileObject(ROI roi) { return createTileObject(roi, null, null); }

    public static PathObject createTileObject(ROI roi, PathClass pathClass, MeasurementList measurements) {
        return new PathTileObject(roi, pathClass, measurements);
    }

    public static PathObject createCellObject(ROI roi, ROI nucleusROI, PathClass pathClass,
                                              MeasurementList measurements) {
        return new PathCellObject(roi, nucleusROI, pathClass, measurements);
    }
}
