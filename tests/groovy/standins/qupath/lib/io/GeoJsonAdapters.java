package qupath.lib.io;

import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonParseException;
import com.google.gson.TypeAdapter;
import com.google.gson.stream.JsonReader;
import com.google.gson.stream.JsonWriter;
import java.io.IOException;
import java.math.BigDecimal;
import java.math.RoundingMode;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.UUID;
import org.locationtech.jts.geom.Coordinate;
import org.locationtech.jts.geom.Geometry;
import org.locationtech.jts.geom.GeometryFactory;
import org.locationtech.jts.geom.LineString;
import org.locationtech.jts.geom.LinearRing;
import org.locationtech.jts.geom.Point;
import org.locationtech.jts.geom.Polygon;
import org.locationtech.jts.geom.PrecisionModel;
import org.locationtech.jts.precision.GeometryPrecisionReducer;
import qupath.lib.common.ColorTools;
import qupath.lib.measurements.MeasurementList;
import qupath.lib.objects.PathCellObject;
import qupath.lib.objects.PathObject;
import qupath.lib.objects.PathObjects;
import qupath.lib.objects.classes.PathClass;
import qupath.lib.roi.interfaces.ROI;

/**
 * GeoJSON reading and writing with the behaviour of QuPath's type adapters that the scripts meet:
 * <ul>
 * <li>a ROI is written as a GeoJSON geometry whose coordinates go out through {@code JsonWriter.jsonValue}
 * (2 decimals), so that {@code gson.toJsonTree(roi)} throws {@code UnsupportedOperationException}, as in QuPath
 * 0.4-0.7 (Gson's tree writer has no jsonValue); {@code gson.toJson(roi)} works;</li>
 * <li>reading is all-or-nothing: a null geometry, a classification object without a colour, a measurement that is
 * not a number, or a geometry that is invalid on QuPath's 0.01 px grid fails the whole read;</li>
 * <li>objects are built by {@link PathObjects} by objectType (anything unknown becomes an annotation), and their
 * measurements go into the object's own list: float32 for detections, tiles and cells.</li>
 * </ul>
 */
final class GeoJsonAdapters {
    private static final GeometryFactory FACTORY = new GeometryFactory();
    private static final PrecisionModel GRID = new PrecisionModel(100);

    private GeoJsonAdapters() {}

    static final class RoiAdapter extends TypeAdapter<ROI> {
        @Override
        public void write(JsonWriter out, ROI roi) throws IOException {
            if (roi == null) {
                out.nullValue();
                return;
            }
            writeGeometry(out, roi.getGeometry());
        }

        @Override
        public ROI read(JsonReader in) throws IOException {
            JsonElement element = com.google.gson.JsonParser.parseReader(in);
            return toRoi(element);
        }
    }

    static final class PathObjectAdapter extends TypeAdapter<PathObject> {
        private final RoiAdapter rois = new RoiAdapter();

        @Override
        public void write(JsonWriter out, PathObject object) throws IOException {
            out.beginObject();
            out.name("type").value("Feature");
            out.name("id").value(object.getID().toString());
            out.name("geometry");
            rois.write(out, object.getROI());
            if (object instanceof PathCellObject && ((PathCellObject) object).getNucleusROI() != null) {
                out.name("nucleusGeometry");
                rois.write(out, ((PathCellObject) object).getNucleusROI());
            }
            out.name("properties").beginObject();
            out.name("objectType").value(object.isCell() ? "cell" : object.isTile() ? "tile"
                    : object.isDetection() ? "detection" : object.isRootObject() ? "root" : "annotation");
            if (object.getName() != null)
                out.name("name").value(object.getName());
            PathClass pathClass = object.getPathClass();
            if (pathClass != null) {
                out.name("classification").beginObject().name("name").value(pathClass.toString());
                Integer rgb = pathClass.getColor();
                if (rgb != null)
                    out.name("color").jsonValue(String.format("[%d, %d, %d]", ColorTools.red(rgb),
                            ColorTools.green(rgb), ColorTools.blue(rgb)));
                out.endObject();
            }
            if (object.isLocked() && !object.isRootObject())
                out.name("isLocked").value(true);
            MeasurementList measurements = object.getMeasurementList();
            if (!measurements.isEmpty()) {
                out.name("measurements").beginObject();
                for (Map.Entry<String, Number> entry : measurements.asMap().entrySet())
                    out.name(entry.getKey()).value(entry.getValue());
                out.endObject();
            }
            out.endObject();
            out.endObject();
        }

        @Override
        public PathObject read(JsonReader in) throws IOException {
            return toObject(com.google.gson.JsonParser.parseReader(in).getAsJsonObject());
        }
    }

    static PathObject toObject(JsonObject feature) {
        ROI roi = toRoi(feature.get("geometry"));
        if (roi == null)
            throw new JsonParseException("a feature has no geometry: " + feature.get("geometry"));
        JsonObject properties = feature.has("properties") && feature.get("properties").isJsonObject()
                ? feature.getAsJsonObject("properties") : new JsonObject();
        String type = properties.has("objectType") ? properties.get("objectType").getAsString() : "annotation";
        PathObject object;
        switch (type) {
            case "tile":
                object = PathObjects.createTileObject(roi);
                break;
            case "cell":
                object = PathObjects.createCellObject(roi, feature.has("nucleusGeometry")
                        ? toRoi(feature.get("nucleusGeometry")) : null, null, null);
                break;
            case "detection":
                object = PathObjects.createDetectionObject(roi);
                break;
            default:
                object = PathObjects.createAnnotationObject(roi);
        }
        if (feature.has("id")) {
            try {
                object.setID(UUID.fromString(feature.get("id").getAsString()));
            } catch (IllegalArgumentException e) {
                // QuPath keeps its own random ID for an id that is not a UUID
            }
        }
        if (properties.has("measurements") && properties.get("measurements").isJsonObject()) {
            MeasurementList list = object.getMeasurementList();
            for (Map.Entry<String, JsonElement> entry : properties.getAsJsonObject("measurements").entrySet()) {
                JsonElement value = entry.getValue();
                if (!value.isJsonPrimitive() || !value.getAsJsonPrimitive().isNumber())
                    throw new JsonParseException("measurement '" + entry.getKey() + "' is not a number: " + value);
                list.put(entry.getKey(), value.getAsDouble());
            }
        }
        if (properties.has("classification"))
            object.setPathClass(toPathClass(properties.get("classification")));
        if (properties.has("name"))
            object.setName(properties.get("name").getAsString());
        if (properties.has("color") && properties.get("color").isJsonArray()) {
            JsonArray rgb = properties.getAsJsonArray("color");
            object.setColor(ColorTools.packRGB(rgb.get(0).getAsInt(), rgb.get(1).getAsInt(), rgb.get(2).getAsInt()));
        }
        if (properties.has("isLocked") && properties.get("isLocked").getAsBoolean())
            object.setLocked(true);
        return object;
    }

    private static PathClass toPathClass(JsonElement element) {
        if (element.isJsonNull())
            return null;
        if (element.isJsonPrimitive())
            return PathClass.fromString(element.getAsString());
        JsonObject classification = element.getAsJsonObject();
        if ((classification.has("name") || classification.has("names")) && classification.has("color")) {
            JsonElement color = classification.get("color");
            if (!color.isJsonArray())
                throw new JsonParseException("Unable to parse PathClass from " + classification);
            JsonArray rgb = color.getAsJsonArray();
            String name;
            if (classification.has("name")) {
                name = classification.get("name").getAsString();
            } else {
                List<String> names = new ArrayList<>();
                classification.getAsJsonArray("names").forEach(n -> names.add(n.getAsString()));
                name = String.join(": ", names);
            }
            return PathClass.fromString(name, ColorTools.packRGB(rgb.get(0).getAsInt(), rgb.get(1).getAsInt(),
                    rgb.get(2).getAsInt()));
        }
        throw new JsonParseException("Unable to parse PathClass from " + classification);
    }

    static ROI toRoi(JsonElement element) {
        if (element == null || element.isJsonNull())
            return null;
        Geometry geometry = toGeometry(element.getAsJsonObject());
        // QuPath 0.6+ snaps geometries to a 0.01 px grid on reading and fails on what is invalid there. The
        // stand-in checks the same, but keeps the coordinates as read (the server writes them on that grid).
        try {
            GeometryPrecisionReducer.reduce(geometry, GRID);
        } catch (RuntimeException e) {
            throw new JsonParseException("Reduction failed, possible invalid input: " + element, e);
        }
        return new JtsROI(geometry);
    }

    private static Geometry toGeometry(JsonObject geometry) {
        String type = geometry.get("type").getAsString();
        JsonArray c = "GeometryCollection".equals(type) ? null : geometry.getAsJsonArray("coordinates");
        switch (type) {
            case "Point":
                return FACTORY.createPoint(coordinate(c));
            case "MultiPoint":
                return FACTORY.createMultiPointFromCoords(coordinates(c));
            case "LineString":
                return FACTORY.createLineString(coordinates(c));
            case "MultiLineString": {
                LineString[] lines = new LineString[c.size()];
                for (int i = 0; i < lines.length; i++)
                    lines[i] = FACTORY.createLineString(coordinates(c.get(i).getAsJsonArray()));
                return FACTORY.createMultiLineString(lines);
            }
            case "Polygon":
                return polygon(c);
            case "MultiPolygon": {
                Polygon[] polygons = new Polygon[c.size()];
                for (int i = 0; i < polygons.length; i++)
                    polygons[i] = polygon(c.get(i).getAsJsonArray());
                return FACTORY.createMultiPolygon(polygons);
            }
            case "GeometryCollection": {
                JsonArray parts = geometry.getAsJsonArray("geometries");
                Geometry[] geometries = new Geometry[parts.size()];
                for (int i = 0; i < geometries.length; i++)
                    geometries[i] = toGeometry(parts.get(i).getAsJsonObject());
                return FACTORY.createGeometryCollection(geometries);
            }
            default:
                throw new JsonParseException("unknown geometry type " + type);
        }
    }

    private static Polygon polygon(JsonArray rings) {
        LinearRing shell = FACTORY.createLinearRing(coordinates(rings.get(0).getAsJsonArray()));
        LinearRing[] holes = new LinearRing[rings.size() - 1];
        for (int i = 1; i < rings.size(); i++)
            holes[i - 1] = FACTORY.createLinearRing(coordinates(rings.get(i).getAsJsonArray()));
        return FACTORY.createPolygon(shell, holes);
    }

    private static Coordinate[] coordinates(JsonArray array) {
        Coordinate[] out = new Coordinate[array.size()];
        for (int i = 0; i < out.length; i++)
            out[i] = coordinate(array.get(i).getAsJsonArray());
        return out;
    }

    private static Coordinate coordinate(JsonArray xy) {
        return new Coordinate(xy.get(0).getAsDouble(), xy.get(1).getAsDouble());
    }

    private static void writeGeometry(JsonWriter out, Geometry geometry) throws IOException {
        out.beginObject();
        out.name("type").value(geometry.getGeometryType());
        if (geometry.getGeometryType().equals("GeometryCollection")) {
            out.name("geometries").beginArray();
            for (int i = 0; i < geometry.getNumGeometries(); i++)
                writeGeometry(out, geometry.getGeometryN(i));
            out.endArray();
        } else {
            out.name("coordinates");
            writeCoordinates(out, geometry);
        }
        out.endObject();
    }

    private static void writeCoordinates(JsonWriter out, Geometry geometry) throws IOException {
        if (geometry instanceof Point) {
            out.jsonValue(text(geometry.getCoordinate()));
        } else if (geometry instanceof LineString) {
            writeSequence(out, geometry.getCoordinates());
        } else if (geometry instanceof Polygon) {
            Polygon polygon = (Polygon) geometry;
            out.beginArray();
            writeSequence(out, polygon.getExteriorRing().getCoordinates());
            for (int i = 0; i < polygon.getNumInteriorRing(); i++)
                writeSequence(out, polygon.getInteriorRingN(i).getCoordinates());
            out.endArray();
        } else {
            out.beginArray();
            for (int i = 0; i < geometry.getNumGeometries(); i++)
                writeCoordinates(out, geometry.getGeometryN(i));
            out.endArray();
        }
    }

    private static void writeSequence(JsonWriter out, Coordinate[] coordinates) throws IOException {
        out.beginArray();
        for (Coordinate c : coordinates)
            out.jsonValue(text(c));
        out.endArray();
    }

    private static String text(Coordinate c) { return "[" + number(c.x) + ", " + number(c.y) + "]"; }

    private static String number(double v) {
        return BigDecimal.valueOf(v).setScale(2, RoundingMode.HALF_UP).stripTrailingZeros().toPlainString();
    }
}
