package qupath.lib.io;

import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import java.io.IOException;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.UUID;
import qupath.lib.common.ColorTools;
import qupath.lib.objects.PathObject;
import qupath.lib.objects.classes.PathClass;

/**
 * Reads QuPath GeoJSON with the rules QuPath applies (QUPATH.md section 1): the whole read fails on a
 * null geometry, a classification without a [r, g, b] colour, or a non-numeric measurement.
 */
public final class PathIO {
    private static final Set<String> TYPES = Set.of("annotation", "detection", "cell", "tile");

    private PathIO() {}

    public static List<PathObject> readObjectsFromGeoJSON(InputStream stream) throws IOException {
        JsonElement root;
        try {
            root = JsonParser.parseReader(new InputStreamReader(stream, StandardCharsets.UTF_8));
        } catch (RuntimeException e) {
            throw new IOException("not GeoJSON: " + e.getMessage(), e);
        }
        List<JsonObject> features = new ArrayList<>();
        if (root.isJsonArray()) {
            for (JsonElement element : root.getAsJsonArray())
                features.add(element.getAsJsonObject());
        } else if (root.isJsonObject() && "FeatureCollection".equals(text(root.getAsJsonObject(), "type"))) {
            for (JsonElement element : root.getAsJsonObject().getAsJsonArray("features"))
                features.add(element.getAsJsonObject());
        } else if (root.isJsonObject() && "Feature".equals(text(root.getAsJsonObject(), "type"))) {
            features.add(root.getAsJsonObject());
        } else {
            throw new IOException("GeoJSON must be a FeatureCollection, a Feature or an array of Features");
        }
        List<PathObject> out = new ArrayList<>();
        for (JsonObject feature : features)
            out.add(toObject(feature));
        return out;
    }

    private static PathObject toObject(JsonObject feature) throws IOException {
        JsonElement geometry = feature.get("geometry");
        if (geometry == null || geometry.isJsonNull())
            throw new IOException("a feature has a null geometry");
        JsonObject properties = feature.has("properties") ? feature.getAsJsonObject("properties") : new JsonObject();
        String type = text(properties, "objectType");
        if (type == null || !TYPES.contains(type))
            type = "annotation";
        UUID id;
        try {
            id = UUID.fromString(text(feature, "id"));
        } catch (RuntimeException e) {
            id = UUID.randomUUID();
        }
        PathObject object = new PathObject(id, type, geometry);
        if (properties.has("classification")) {
            JsonObject classification = properties.getAsJsonObject("classification");
            JsonElement color = classification.get("color");
            if (color == null || !color.isJsonArray() || color.getAsJsonArray().size() != 3)
                throw new IOException("classification " + classification + " has no [r, g, b] color");
            JsonArray rgb = color.getAsJsonArray();
            object.setPathClass(PathClass.fromString(text(classification, "name"),
                    ColorTools.packRGB(rgb.get(0).getAsInt(), rgb.get(1).getAsInt(), rgb.get(2).getAsInt())));
        }
        if (properties.has("measurements")) {
            for (Map.Entry<String, JsonElement> entry : properties.getAsJsonObject("measurements").entrySet()) {
                JsonElement value = entry.getValue();
                if (!value.isJsonPrimitive() || !value.getAsJsonPrimitive().isNumber())
                    throw new IOException("measurement " + entry.getKey() + " is not a number: " + value);
                object.getMeasurementList().put(entry.getKey(), value.getAsDouble());
            }
        }
        if (properties.has("name"))
            object.setName(text(properties, "name"));
        if (properties.has("isLocked"))
            object.setLocked(properties.get("isLocked").getAsBoolean());
        return object;
    }

    private static String text(JsonObject object, String name) {
        JsonElement value = object.get(name);
        return value == null || value.isJsonNull() ? null : value.getAsString();
    }
}
