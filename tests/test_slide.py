import shutil

import numpy as np
import pytest
from PIL import Image

from tumls_qp.errors import InvalidInputError, MissingMppError, SlideOpenError
from tumls_qp.slide import open_slide, slide_quickhash


def test_synthetic_slide_pyramid_invariants(slides):
    with open_slide(slides["two-tissues"]) as slide:
        assert slide.dimensions == (3072, 2048)
        assert slide.mpp == pytest.approx(0.5) and slide.mpp_source == "file"
        dims = slide.level_dimensions
        assert all(a[0] > b[0] and a[1] > b[1] for a, b in zip(dims, dims[1:]))
        assert list(slide.level_downsamples) == sorted(slide.level_downsamples)
        assert slide.level_downsamples[0] == 1.0


def test_read_box_size_and_level_choice(slides):
    with open_slide(slides["two-tissues"]) as slide:
        assert slide.best_level_for_mpp(0.5) == 0
        assert slide.best_level_for_mpp(1.0) == 1
        assert slide.best_level_for_mpp(3.0) == 2  # 2.0 µm/px is the coarsest level not coarser than 3
        assert slide.best_level_for_mpp(0.1) == 0
        rgb = slide.read_box((100, 200, 300, 150), mpp=2.0)
        assert rgb.shape == (38, 75, 3) and rgb.dtype == np.uint8
        full = slide.read_box((0, 0, 512, 512), mpp=0.5)
        assert full.shape == (512, 512, 3)
        # The same area read at level 0 and level 2 agrees once resampled (same scene, same place).
        coarse = slide.read_box((1024, 512, 1024, 1024), mpp=2.0).astype(float)
        fine = slide.read_box((1024, 512, 1024, 1024), mpp=0.5)
        fine = np.asarray(Image.fromarray(fine).resize((256, 256), Image.Resampling.BOX)).astype(float)
        assert np.abs(coarse.mean(axis=(0, 1)) - fine.mean(axis=(0, 1))).max() < 12


def test_outside_the_slide_reads_white(slides):
    with open_slide(slides["two-tissues"]) as slide:
        rgb = slide.read_region((3072 - 10, -5), 0, (20, 20))
        assert rgb.shape == (20, 20, 3)
        assert rgb[:, 10:].min() == 255 and rgb[:5].min() == 255
        assert rgb[5:, :10].mean() < 250  # the slide's own pixels
        assert slide.read_region((5000, 5000), 1, (4, 4)).min() == 255


def test_ome_tiff_pixel_size(tmp_path):
    import tifffile

    from tumls_qp.testing import render_scene

    rgb = render_scene("two-tissues", 0, 0, 1024, 512, 0.5, (512, 256))
    path = tmp_path / "slide.ome.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(rgb, subifds=1, tile=(256, 256), photometric="rgb", compression="zlib",
                 metadata={"axes": "YXS", "PhysicalSizeX": 250, "PhysicalSizeXUnit": "nm",
                           "PhysicalSizeY": 250, "PhysicalSizeYUnit": "nm"})
        tw.write(rgb[::2, ::2], subfiletype=1, tile=(256, 256), photometric="rgb", compression="zlib")
    with open_slide(path) as slide:
        assert slide.mpp == pytest.approx(0.25) and slide.mpp_source == "file"
        assert slide.level_dimensions == ((1024, 512), (512, 256))
        assert np.array_equal(slide.read_box((0, 0, 1024, 512), 0.25), rgb)


def test_missing_mpp_says_how_to_pass_it(slides):
    with pytest.raises(MissingMppError, match="--mpp"):
        open_slide(slides["no-mpp"])
    with open_slide(slides["no-mpp"], mpp=0.25) as slide:
        assert slide.mpp == 0.25 and slide.mpp_source == "caller"


def test_file_mpp_wins_unless_overridden(slides):
    with open_slide(slides["two-tissues"], mpp=0.25) as slide:
        assert slide.mpp == pytest.approx(0.5)
    with open_slide(slides["two-tissues"], mpp=0.25, mpp_override=True) as slide:
        assert slide.mpp == 0.25


@pytest.mark.parametrize("mpp", [-1.0, 0.0, float("nan")])
def test_bad_mpp_argument(slides, mpp):
    with pytest.raises(InvalidInputError, match="mpp must be a positive pixel size"):
        open_slide(slides["two-tissues"], mpp=mpp)


def test_missing_file(tmp_path):
    with pytest.raises(SlideOpenError, match="slide file not found"):
        open_slide(tmp_path / "nope.svs")


def test_folder_is_not_a_slide(tmp_path):
    with pytest.raises(SlideOpenError, match="not a file"):
        open_slide(tmp_path)


def test_text_file_is_not_a_slide(tmp_path):
    path = tmp_path / "notes.svs"
    path.write_text("hello")
    with pytest.raises(SlideOpenError, match="cannot open .* as a slide"):
        open_slide(path)


def test_png_is_not_a_slide(tmp_path):
    path = tmp_path / "picture.png"
    Image.new("RGB", (64, 64), "white").save(path)
    with pytest.raises(SlideOpenError, match="cannot open .* as a slide"):
        open_slide(path)


def test_truncated_tiff(slides, tmp_path):
    data = slides["two-tissues"].read_bytes()
    path = tmp_path / "truncated.tif"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(SlideOpenError) as info:
        with open_slide(path) as slide:  # opening may succeed; decoding must fail clearly
            slide.read_box((0, 0, *slide.dimensions), mpp=8.0)
    assert "truncated or damaged" in str(info.value) or "cannot open" in str(info.value)


def test_quickhash_changes_with_content(slides, tmp_path):
    copy = tmp_path / "copy.tif"
    shutil.copy(slides["two-tissues"], copy)
    assert slide_quickhash(copy) == slide_quickhash(slides["two-tissues"])
    with copy.open("r+b") as fh:
        fh.seek(-10, 2)
        fh.write(b"0123456789")
    assert slide_quickhash(copy) != slide_quickhash(slides["two-tissues"])


@pytest.mark.realdata
def test_real_svs_jpeg(wsi):
    with open_slide(wsi / "CMU-1-Small-Region.svs") as slide:
        assert slide.dimensions == (2220, 2967)
        assert slide.mpp == pytest.approx(0.499) and slide.vendor == "aperio"
        rgb = slide.read_box((0, 0, 512, 512), mpp=0.499)
        assert rgb.shape == (512, 512, 3) and rgb.std() > 5


@pytest.mark.realdata
def test_real_svs_jpeg2000_without_mpp(wsi):
    path = wsi / "tcga-cr-7395-01a-01-ts1.svs"
    with pytest.raises(MissingMppError, match="does not state its pixel size"):
        open_slide(path)
    with open_slide(path, mpp=1.0) as slide:
        assert slide.level_dimensions == ((4443, 3567), (2221, 1783))
        rgb = slide.read_box((2000, 1500, 256, 256), mpp=2.0)  # decodes JPEG 2000 at level 1
        assert rgb.shape == (128, 128, 3) and rgb.std() > 5


@pytest.mark.realdata
def test_real_ndpi_opens(wsi):
    with open_slide(wsi / "test3-DAPI-2-387.ndpi") as slide:
        assert slide.vendor == "hamamatsu" and len(slide.level_dimensions) == 4
        assert slide.mpp == pytest.approx(0.22818, rel=1e-4)
