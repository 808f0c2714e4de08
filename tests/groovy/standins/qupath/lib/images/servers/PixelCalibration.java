package qupath.lib.images.servers;

/** Pixel size; without one in µm, hasPixelSizeMicrons() is false and the averaged size is NaN. */
public class PixelCalibration {
    private final double width;
    private final double height;

    private PixelCalibration(double width, double height) {
        this.width = width;
        this.height = height;
    }

    public boolean hasPixelSizeMicrons() { return !Double.isNaN(width) && !Double.isNaN(height); }

    public double getAveragedPixelSizeMicrons() { return (width + height) / 2; }

    public static class Builder {
        private double width = Double.NaN;
        private double height = Double.NaN;

        public Builder() {}

        public Builder pixelSizeMicrons(Number pixelWidth, Number pixelHeight) {
            this.width = pixelWidth.doubleValue();
            this.height = pixelHeight.doubleValue();
            return this;
        }

        public PixelCalibration build() { return new PixelCalibration(width, height); }
    }
}
