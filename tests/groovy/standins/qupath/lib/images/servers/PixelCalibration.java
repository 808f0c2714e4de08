package qupath.lib.images.servers;

/** Pixel size in µm; NaN when unknown, as in QuPath. */
public class PixelCalibration {
    private final double micrometers;

    public PixelCalibration(double micrometers) { this.micrometers = micrometers; }

    public boolean hasPixelSizeMicrons() { return !Double.isNaN(micrometers); }

    public double getAveragedPixelSizeMicrons() { return micrometers; }
}
