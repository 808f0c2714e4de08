package qupath.lib.io;

import org.locationtech.jts.geom.Geometry;
import org.locationtech.jts.geom.Point;
import qupath.lib.roi.interfaces.ROI;

/** The stand-in's one ROI implementation: a JTS geometry (QuPath picks a ROI class by shape; none is public API here). */
final class JtsROI implements ROI {
    private final Geometry geometry;

    JtsROI(Geometry geometry) { this.geometry = geometry; }

    @Override
    public Geometry getGeometry() { return geometry; }

    @Override
    public double getArea() { return geometry.getArea(); }

    @Override
    public boolean isArea() { return geometry.getDimension() == 2; }

    @Override
    public boolean isEmpty() { return geometry.isEmpty(); }

    @Override
    public double getCentroidX() { return centroid().getX(); }

    @Override
    public double getCentroidY() { return centroid().getY(); }

    private Point centroid() { return geometry.getCentroid(); }

    @Override
    public String toString() { return geometry.getGeometryType() + " ROI"; }
}
