package qupath.lib.roi.interfaces;

import org.locationtech.jts.geom.Geometry;

/** A region of interest: here always backed by a JTS geometry, as QuPath's ROIs can be converted to one. */
public interface ROI {
    Geometry getGeometry();

    double getArea();

    boolean isArea();

    boolean isEmpty();

    double getCentroidX();

    double getCentroidY();
}
