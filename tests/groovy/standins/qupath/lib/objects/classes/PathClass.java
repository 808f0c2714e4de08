package qupath.lib.objects.classes;

import java.util.LinkedHashMap;
import java.util.Map;

/** One instance per name, like QuPath's classes; the colour is set only when a class is first made. */
public final class PathClass {
    private static final Map<String, PathClass> REGISTRY = new LinkedHashMap<>();
    private final String name;
    private Integer color;

    private PathClass(String name, Integer color) {
        this.name = name;
        this.color = color;
    }

    public static synchronized PathClass fromString(String name) {
        return fromString(name, null);
    }

    public static synchronized PathClass fromString(String name, Integer rgb) {
        PathClass existing = REGISTRY.get(name);
        if (existing != null)
            return existing;
        PathClass created = new PathClass(name, rgb == null ? 0xff808080 : rgb);
        REGISTRY.put(name, created);
        return created;
    }

    /** Stand-in only: every class made so far. */
    public static synchronized Map<String, PathClass> registry() {
        return new LinkedHashMap<>(REGISTRY);
    }

    public String getName() { return name; }

    public Integer getColor() { return color; }

    public void setColor(Integer rgb) { this.color = rgb; }

    @Override
    public String toString() { return name; }
}
