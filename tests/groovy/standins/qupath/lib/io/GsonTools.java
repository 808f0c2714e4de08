package qupath.lib.io;

import com.google.gson.Gson;
import com.google.gson.GsonBuilder;
import com.google.gson.JsonSerializer;
import qupath.lib.roi.interfaces.ROI;

/** QuPath's Gson with its ROI adapter, which writes a ROI as a GeoJSON geometry. */
public final class GsonTools {
    private static final Gson GSON = new GsonBuilder()
            .registerTypeHierarchyAdapter(ROI.class, (JsonSerializer<ROI>) (roi, type, context) -> roi.getGeometryJson())
            .serializeSpecialFloatingPointValues()
            .create();

    private GsonTools() {}

    public static Gson getInstance() { return GSON; }
}
