package qupath.lib.images.servers;

/** An image's metadata, made with its Builder (QuPath has no public constructor taking values). */
public class ImageServerMetadata {
    private final String name;
    private final int width;
    private final int height;
    private final PixelCalibration calibration;

    private ImageServerMetadata(Builder builder) {
        this.name = builder.name;
        this.width = builder.width;
        this.height = builder.height;
        this.calibration = builder.calibration.build();
    }

    public String getName() { return name; }

    public int getWidth() { return width; }

    public int getHeight() { return height; }

    public PixelCalibration getPixelCalibration() { return calibration; }

    public static class Builder {
        private String name;
        private int width;
        private int height;
        private final PixelCalibration.Builder calibration = new PixelCalibration.Builder();

        public Builder() {}

        public Builder name(String name) {
            this.name = name;
            return this;
        }

        public Builder width(int width) {
            this.width = width;
            return this;
        }

        public Builder height(int height) {
            this.height = height;
            return this;
        }

        public Builder pixelSizeMicrons(Number pixelWidth, Number pixelHeight) {
            calibration.pixelSizeMicrons(pixelWidth, pixelHeight);
            return this;
        }

        public ImageServerMetadata build() {
            if (width <= 0 || height <= 0)
                throw new IllegalArgumentException("Width and height must be > 0");
            return new ImageServerMetadata(this);
        }
    }
}
