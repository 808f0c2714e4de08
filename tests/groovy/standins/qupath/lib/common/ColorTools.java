package qupath.lib.common;

/** Packed (A)RGB colours, as QuPath stores them. */
public final class ColorTools {
    private ColorTools() {}

    public static int packRGB(int r, int g, int b) {
        return (255 << 24) | ((r & 255) << 16) | ((g & 255) << 8) | (b & 255);
    }

    public static int red(int rgb) { return (rgb >> 16) & 255; }

    public static int green(int rgb) { return (rgb >> 8) & 255; }

    public static int blue(int rgb) { return rgb & 255; }
}
