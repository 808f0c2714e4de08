package qupath.lib.gui.scripting;

import qupath.lib.gui.QuPathGUI;
import qupath.lib.scripting.QP;

/** QP plus the GUI: getQuPath() is null when QuPath runs headless. */
public class QPEx extends QP {
    public static QuPathGUI getQuPath() { return QuPathGUI.getInstance(); }
}
