package qupath.lib.objects;

import com.google.gson.JsonElement;
import java.util.ArrayList;
import java.util.List;
import java.util.UUID;
import qupath.lib.measurements.DefaultMeasurementList;
import qupath.lib.measurements.MeasurementList;
import qupath.lib.objects.classes.PathClass;
import qupath.lib.roi.interfaces.ROI;

/** An object of the hierarchy; the geometry is kept as the GeoJSON it was read from. */
public class PathObject {
    private final UUID id;
    private final String objectType;
    private final JsonElement geometry;
    private final MeasurementList measurements = new DefaultMeasurementList();
    private final List<PathObject> children = new ArrayList<>();
    private PathObject parent;
    private PathClass pathClass;
    private String name;
    private boolean locked;

    public PathObject(UUID id, String objectType, JsonElement geometry) {
        this.id = id;
        this.objectType = objectType;
        this.geometry = geometry;
    }

    public UUID getID() { return id; }

    public boolean isRootObject() { return "root".equals(objectType); }

    public boolean isAnnotation() { return "annotation".equals(objectType); }

    public boolean isTile() { return "tile".equals(objectType); }

    public ROI getROI() { return geometry == null ? null : () -> geometry; }

    public MeasurementList getMeasurementList() { return measurements; }

    public PathClass getPathClass() { return pathClass; }

    public void setPathClass(PathClass pathClass) { this.pathClass = pathClass; }

    public String getName() { return name; }

    public void setName(String name) { this.name = name; }

    public boolean isLocked() { return locked; }

    public void setLocked(boolean locked) { this.locked = locked; }

    public PathObject getParent() { return parent; }

    public List<PathObject> getChildObjects() { return new ArrayList<>(children); }

    /** Stand-in only. */
    public String getObjectType() { return objectType; }

    /** Stand-in only. */
    public JsonElement getGeometryJson() { return geometry; }

    void attach(PathObject child) {
        child.parent = this;
        children.add(child);
    }

    void detach(PathObject child) {
        children.remove(child);
        child.parent = null;
    }
}
