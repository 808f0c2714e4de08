package qupath.lib.measurements;

import java.util.Map;
import java.util.Set;

/** Named numeric measurements of an object (the Map-like API QuPath has had since 0.4). */
public interface MeasurementList extends AutoCloseable {

    enum MeasurementListType { GENERAL, DOUBLE, FLOAT }

    void put(String name, double value);

    double get(String name);

    boolean containsKey(String name);

    Set<String> keySet();

    Map<String, Number> asMap();

    void putAll(Map<String, ? extends Number> map);

    int size();

    boolean isEmpty();

    void clear();

    @Override
    void close();
}
