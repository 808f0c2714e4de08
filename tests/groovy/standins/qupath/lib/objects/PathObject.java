package qupath.lib.objects;

import java.util.ArrayList;
import java.util.Collection;
import java.util.Collections;
import java.util.List;
import java.util.UUID;
import qupath.lib.measurements.MeasurementList;
import qupath.lib.measurements.MeasurementListFactory;
import qupath.lib.objects.classes.PathClass;
import qupath.lib.roi.interfaces.ROI;

/**
 * An object of a hierarchy. Abstract, as in QuPath: objects are made by {@link PathObjects} (or read by PathIO).
 * A child has one parent; adding it to another parent moves it. getChildObjects() is an unmodifiable view.
 */
public abstract class PathObject {
    private UUID id = UUID.randomUUID();
    private PathObject parent;
    private final List<PathObject> children = new ArrayList<>();
    private MeasurementList measurements;
    private String name;
    private Integer color;

    public PathObject(MeasurementList measurements) { this.measurements = measurements; }

    public PathObject() {}

    public UUID getID() { return id; }

    public void setID(UUID id) { this.id = id; }

    public PathObject getParent() { return parent; }

    public int getLevel() { return parent == null ? 0 : parent.getLevel() + 1; }

    public boolean isRootObject() { return this instanceof PathRootObject; }

    public boolean isAnnotation() { return this instanceof PathAnnotationObject; }

    public boolean isDetection() { return this instanceof PathDetectionObject; }

    public boolean isTile() { return this instanceof PathTileObject; }

    public boolean isCell() { return this instanceof PathCellObject; }

    public boolean hasROI() { return getROI() != null; }

    public abstract ROI getROI();

    public abstract PathClass getPathClass();

    public void setPathClass(PathClass pathClass) { setPathClass(pathClass, Double.NaN); }

    public abstract void setPathClass(PathClass pathClass, double classProbability);

    /** Objects are locked unless a subclass says otherwise (only ROI objects can be unlocked). */
    public boolean isLocked() { return true; }

    public void setLocked(boolean locked) {
        if (!locked)
            throw new UnsupportedOperationException("Locked status cannot be unset!");
    }

    public String getName() { return name; }

    public void setName(String name) { this.name = name; }

    public Integer getColor() { return color; }

    public void setColor(Integer color) { this.color = color; }

    public synchronized MeasurementList getMeasurementList() {
        if (measurements == null)
            measurements = createEmptyMeasurementList();
        return measurements;
    }

    MeasurementList createEmptyMeasurementList() {
        return MeasurementListFactory.createMeasurementList(0, MeasurementList.MeasurementListType.GENERAL);
    }

    public synchronized Collection<PathObject> getChildObjects() {
        return Collections.unmodifiableList(new ArrayList<>(children));
    }

    public synchronized boolean hasChildObjects() { return !children.isEmpty(); }

    public synchronized int nChildObjects() { return children.size(); }

    public void addChildObject(PathObject pathObject) { addChildObjects(List.of(pathObject)); }

    public void addChildObjects(Collection<? extends PathObject> pathObjects) {
        for (PathObject child : new ArrayList<>(pathObjects)) {
            if (child == this || child.parent == this)
                continue;
            if (child.parent != null)
                child.parent.removeChildObject(child);
            synchronized (this) {
                child.parent = this;
                children.add(child);
            }
        }
    }

    public void removeChildObject(PathObject pathObject) { removeChildObjects(List.of(pathObject)); }

    public synchronized void removeChildObjects(Collection<? extends PathObject> pathObjects) {
        for (PathObject child : pathObjects) {
            if (child.parent == this && children.remove(child))
                child.parent = null;
        }
    }

    public synchronized void clearChildObjects() {
        for (PathObject child : children)
            child.parent = null;
        children.clear();
    }

    @Override
    public String toString() {
        String kind = getClass().getSimpleName();
        return kind + " (" + (name != null ? name : getPathClass() == null ? "Unclassified" : getPathClass()) + ")";
    }
}
