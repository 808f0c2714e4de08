package qupath.lib.gui;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collection;
import javafx.application.Platform;
import javafx.collections.ObservableList;
import qupath.lib.objects.classes.PathClass;

/**
 * QuPath's main window, reduced to its class list. There is no public constructor (QuPath makes its one
 * instance at start-up); getInstance() is null when QuPath runs headless. The class list is a JavaFX list that
 * the GUI draws: it may only change on the JavaFX application thread, so a change from elsewhere throws here.
 */
public class QuPathGUI {
    private static QuPathGUI instance;
    private final ObservableList<PathClass> availablePathClasses = new FxThreadList<>();

    private QuPathGUI() {}

    public static QuPathGUI getInstance() { return instance; }

    public ObservableList<PathClass> getAvailablePathClasses() { return availablePathClasses; }

    private static final class FxThreadList<E> extends ArrayList<E> implements ObservableList<E> {
        private static void check() {
            if (!Platform.isFxApplicationThread())
                throw new IllegalStateException("Not on FX application thread; currentThread = "
                        + Thread.currentThread().getName());
        }

        @Override
        public boolean add(E e) {
            check();
            return super.add(e);
        }

        @Override
        public boolean addAll(Collection<? extends E> c) {
            check();
            return super.addAll(c);
        }

        @Override
        @SafeVarargs
        public final boolean addAll(E... elements) { return addAll(Arrays.asList(elements)); }

        @Override
        public boolean setAll(Collection<? extends E> collection) {
            check();
            super.clear();
            return super.addAll(collection);
        }

        @Override
        public boolean remove(Object o) {
            check();
            return super.remove(o);
        }

        @Override
        public void clear() {
            check();
            super.clear();
        }
    }
}
