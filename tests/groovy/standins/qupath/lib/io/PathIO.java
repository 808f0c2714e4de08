package qupath.lib.io;

import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import java.io.BufferedInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import qupath.lib.objects.PathObject;

/** Reads QuPath objects from GeoJSON: a FeatureCollection, a Feature, or an array of them (all or nothing). */
public class PathIO {
    private PathIO() {}

    public static List<PathObject> readObjectsFromGeoJSON(InputStream stream) throws IOException {
        try (InputStreamReader reader = new InputStreamReader(new BufferedInputStream(stream),
                StandardCharsets.UTF_8)) {
            List<PathObject> out = new ArrayList<>();
            add(JsonParser.parseReader(reader), out);
            return out;
        }
    }

    private static void add(JsonElement element, List<PathObject> out) {
        if (element == null || element.isJsonNull())
            return;
        if (element.isJsonArray()) {
            for (JsonElement item : element.getAsJsonArray())
                add(item, out);
            return;
        }
        JsonObject object = element.getAsJsonObject();
        String type = object.has("type") ? object.get("type").getAsString() : "";
        if ("Feature".equals(type))
            out.add(GeoJsonAdapters.toObject(object));
        else if ("FeatureCollection".equals(type))
            add(object.get("features"), out);
    }
}
