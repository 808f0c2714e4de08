package qupath.lib.gui.scripting;

import qupath.lib.gui.QuPathGUI;
import qupath.lib.scripting.QP;

/** QP plus the GUI: getQuPath() is null when QuPath runs headless (and here unless the harness sets a GUI). */
public class QPEx extends QP {
    private static QuPathGUI gui;

    /** Stand-in only. */
    public static void setQuPath(QuPathGUI instance) { gui = instance; }

    public static QuPathGUI getQuPath() { return gui; }
}
