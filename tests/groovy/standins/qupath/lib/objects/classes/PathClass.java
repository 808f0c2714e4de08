package qupath.lib.objects.classes;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import qupath.lib.common.ColorTools;

/**
 * One instance per class, as in QuPath: "a: b" is the class "b" derived from "a" (getName() is "b", toString()
 * "a: b"). The colour is only taken when a class is first made; a class made without one gets a colour derived
 * from its name. QuPath's built-in classes (Tumor, Stroma, ...) exist from the start with QuPath's colours.
 */
public final class PathClass {
    private static final String DELIMITER = ":";
    private static final Map<String, PathClass> EXISTING = new LinkedHashMap<>();
    private final PathClass parent;
    private final String name;
    private Integer color;

    static {
        standard("Tumor", 200, 0, 0);
        standard("Stroma", 150, 200, 150);
        standard("Immune cells", 160, 90, 160);
        standard("Necrosis", 50, 50, 50);
        standard("Other", 255, 200, 0);
        standard("Region*", 0, 0, 180);
        standard("Ignore*", 180, 180, 180);
        standard("Image", 128, 128, 128);
    }

    private PathClass(PathClass parent, String name, Integer color) {
        this.parent = parent;
        this.name = name;
        this.color = color;
    }

    private static void standard(String name, int r, int g, int b) {
        getInstance(name, ColorTools.packRGB(r, g, b));
    }

    public static PathClass fromString(String string) { return fromString(string, null); }

    public static PathClass fromString(String string, Integer color) {
        if (string == null)
            return null;
        List<String> names = new ArrayList<>();
        for (String part : string.split(DELIMITER))
            names.add(part.strip());
        PathClass pathClass = null;
        for (String part : names)
            pathClass = getInstance(pathClass, part, color);
        return pathClass;
    }

    public static PathClass getInstance(String name) { return getInstance(null, name, null); }

    public static PathClass getInstance(String name, Integer color) { return getInstance(null, name, color); }

    public static PathClass getInstance(PathClass parent, String name, Integer color) {
        if (name == null)
            throw new IllegalArgumentException("a class needs a name");
        if (name.contains(DELIMITER))
            throw new IllegalArgumentException("Name '" + name + "' contains the delimiter '" + DELIMITER + "'");
        String key = parent == null ? name : parent + DELIMITER + " " + name;
        synchronized (EXISTING) {
            return EXISTING.computeIfAbsent(key, k -> new PathClass(parent, name,
                    color != null ? color : colourFromName(k)));
        }
    }

    /** A colour derived from the name (stand-in rule: QuPath's differs, but is also fixed by the name). */
    private static int colourFromName(String key) {
        int h = key.hashCode();
        return ColorTools.packRGB(64 + ((h >> 16) & 127), 64 + ((h >> 8) & 127), 64 + (h & 127));
    }

    public String getName() { return name; }

    public PathClass getParentClass() { return parent; }

    public boolean isDerivedClass() { return parent != null; }

    public PathClass getBaseClass() { return parent == null ? this : parent.getBaseClass(); }

    public Integer getColor() { return color; }

    public void setColor(Integer colorRGB) { this.color = colorRGB; }

    public void setColor(int red, int green, int blue) { setColor(ColorTools.packRGB(red, green, blue)); }

    @Override
    public String toString() { return parent == null ? name : parent + DELIMITER + " " + name; }
}
