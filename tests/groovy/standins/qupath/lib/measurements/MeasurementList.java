package qupath.lib.measurements;

import java.util.List;
import java.util.Map;

/** The part of QuPath's MeasurementList (0.4+) the script and the harness use. */
public interface MeasurementList {
    void put(String name, double value);

    double get(String name);

    boolean containsKey(String name);

    List<String> getNames();

    Map<String, Number> asMap();
}
