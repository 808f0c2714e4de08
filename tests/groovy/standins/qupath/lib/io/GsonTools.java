package qupath.lib.io;

import com.google.gson.Gson;
import com.google.gson.GsonBuilder;
import com.google.gson.TypeAdapter;
import com.google.gson.TypeAdapterFactory;
import com.google.gson.reflect.TypeToken;
import qupath.lib.objects.PathObject;
import qupath.lib.roi.interfaces.ROI;

/** QuPath's Gson: ROIs and objects go through QuPath's GeoJSON adapters (see GeoJsonAdapters). */
public class GsonTools {
    private static final TypeAdapterFactory FACTORY = new TypeAdapterFactory() {
        @Override
        @SuppressWarnings("unchecked")
        public <T> TypeAdapter<T> create(Gson gson, TypeToken<T> type) {
            Class<? super T> cls = type.getRawType();
            if (ROI.class.isAssignableFrom(cls))
                return (TypeAdapter<T>) new GeoJsonAdapters.RoiAdapter();
            if (PathObject.class.isAssignableFrom(cls))
                return (TypeAdapter<T>) new GeoJsonAdapters.PathObjectAdapter();
            return null;
        }
    };
    private static final Gson GSON = new GsonBuilder().serializeSpecialFloatingPointValues()
            .registerTypeAdapterFactory(FACTORY).create();
    private static final Gson PRETTY = new GsonBuilder().serializeSpecialFloatingPointValues()
            .registerTypeAdapterFactory(FACTORY).setPrettyPrinting().create();

    private GsonTools() {}

    public static Gson getInstance() { return GSON; }

    public static Gson getInstance(boolean pretty) { return pretty ? PRETTY : GSON; }
}
