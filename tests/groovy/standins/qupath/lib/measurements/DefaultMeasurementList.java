package qupath.lib.measurements;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/** Measurements in insertion order. */
public class DefaultMeasurementList implements MeasurementList {
    private final Map<String, Double> values = new LinkedHashMap<>();

    @Override
    public synchronized void put(String name, double value) { values.put(name, value); }

    @Override
    public synchronized double get(String name) {
        Double value = values.get(name);
        return value == null ? Double.NaN : value;
    }

    @Override
    public synchronized boolean containsKey(String name) { return values.containsKey(name); }

    @Override
    public synchronized List<String> getNames() { return new ArrayList<>(values.keySet()); }

    @Override
    public synchronized Map<String, Number> asMap() { return new LinkedHashMap<>(values); }
}
