package qupath.lib.roi.interfaces;

import com.google.gson.JsonElement;

/** A region of interest; here only the GeoJSON geometry it was made from. */
public interface ROI {
    /** Stand-in only. */
    JsonElement getGeometryJson();
}
