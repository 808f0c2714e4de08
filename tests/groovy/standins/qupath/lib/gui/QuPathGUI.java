package qupath.lib.gui;

import java.util.ArrayList;
import java.util.List;
import qupath.lib.objects.classes.PathClass;

/** The GUI's class list (an ObservableList in QuPath). */
public class QuPathGUI {
    private final List<PathClass> available = new ArrayList<>();

    public List<PathClass> getAvailablePathClasses() { return available; }
}
