package qupath.lib.measurements;

import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Set;

/** Makes measurement lists; a FLOAT list (QuPath's for detections, tiles and cells) keeps values as float32. */
public class MeasurementListFactory {
    private MeasurementListFactory() {}

    public static MeasurementList createMeasurementList(int capacity, MeasurementList.MeasurementListType type) {
        return new ValueList(type == MeasurementList.MeasurementListType.FLOAT);
    }

    private static final class ValueList implements MeasurementList {
        private final boolean float32;
        private final Map<String, Double> values = new LinkedHashMap<>();

        ValueList(boolean float32) { this.float32 = float32; }

        @Override
        public synchronized void put(String name, double value) {
            values.put(name, float32 ? (double) (float) value : value);
        }

        @Override
        public synchronized double get(String name) {
            Double value = values.get(name);
            return value == null ? Double.NaN : value;
        }

        @Override
        public synchronized boolean containsKey(String name) { return values.containsKey(name); }

        @Override
        public synchronized Set<String> keySet() { return java.util.Collections.unmodifiableSet(values.keySet()); }

        @Override
        public synchronized Map<String, Number> asMap() { return new LinkedHashMap<>(values); }

        @Override
        public synchronized void putAll(Map<String, ? extends Number> map) {
            for (Map.Entry<String, ? extends Number> entry : map.entrySet())
                put(entry.getKey(), entry.getValue().doubleValue());
        }

        @Override
        public synchronized int size() { return values.size(); }

        @Override
        public synchronized boolean isEmpty() { return values.isEmpty(); }

        @Override
        public synchronized void clear() { values.clear(); }

        @Override
        public void close() {}
    }
}
