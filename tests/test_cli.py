import json
import subprocess
import sys
import tomllib

import pytest
from PIL import Image

from tumls_qp.cli import DEMO_SLIDE, main
from tumls_qp.config import PipelineConfig, config_from_dict
from tumls_qp.outputs.geojson import validate_geojson_file

FAST = ["--tile-um", "64", "--device", "cpu", "--no-cache", "-q"]


@pytest.fixture()
def fast_toml(tmp_path):
    path = tmp_path / "fast.toml"
    path.write_text("[embedding]\nmax_epochs = 3\n")
    return ["--config", str(path)]


def test_import_is_light():
    code = ("import sys, tumls_qp, tumls_qp.cli, tumls_qp.config, tumls_qp.pipeline;"
            "heavy = [m for m in ('torch', 'reportlab', 'fastapi', 'paquo', 'jpype', 'matplotlib') if m in sys.modules];"
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_help_and_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and "tumls-qp" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["analyze", "--help"])
    assert "--tile-um" in capsys.readouterr().out


def test_config_prints_defaults(capsys, tmp_path):
    assert main(["config"]) == 0
    assert config_from_dict(tomllib.loads(capsys.readouterr().out)) == PipelineConfig()
    custom = tmp_path / "c.toml"
    custom.write_text("[clusters]\nk = 3\n")
    assert main(["config", str(custom)]) == 0
    assert tomllib.loads(capsys.readouterr().out)["clusters"]["k"] == 3


def test_analyze_writes_run_folder(slides, tmp_path, fast_toml, capsys):
    out = tmp_path / "out"
    assert main(["analyze", str(slides["two-tissues"]), "--out", str(out), *FAST, *fast_toml, "--k", "2"]) == 0
    assert "two-tissues.tif: 2 tissue(s)" in capsys.readouterr().out
    assert validate_geojson_file(out / "two-tissues" / "tissue.geojson") == []
    manifest = json.loads((out / "two-tissues" / "manifest.json").read_text())
    assert manifest["clusters"]["k_source"] == "user" and manifest["config"]["tiles"]["tile_um"] == 64.0


def _fails(argv, code, fragment, capsys, out):
    assert main(argv) == code
    err = capsys.readouterr().err
    assert fragment in err, err
    if out.exists():
        assert not [p for p in out.iterdir()], "a failed run left files behind"


def test_bad_inputs_exit_codes_and_messages(slides, tmp_path, capsys, fast_toml):
    out = tmp_path / "out"
    run = ["analyze", "--out", str(out), *FAST, *fast_toml]
    text = tmp_path / "notes.txt"
    text.write_text("not a slide")
    png = tmp_path / "photo.png"
    Image.new("RGB", (300, 300), "pink").save(png)
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(slides["two-tissues"].read_bytes()[:20000])
    cases = [
        ([str(tmp_path / "missing.svs")], 3, "slide file not found"),
        ([str(text)], 3, "cannot open"),
        ([str(png)], 3, "cannot open"),
        ([str(truncated)], 3, "damaged"),
        ([str(slides["no-mpp"])], 3, "--mpp"),
        ([str(slides["fluorescence"])], 3, "fluorescence"),
        ([str(slides["dab"])], 3, "does not look H&E-stained"),
        ([str(slides["blank"])], 3, "no tissue found"),
        ([str(slides["two-tissues"]), "--tile-um", "5000"], 3, "larger than the slide"),
        ([str(slides["two-tissues"]), "--k", "0"], 2, "clusters.k must be an integer >= 1"),
    ]
    for extra, code, fragment in cases:
        _fails(run + extra, code, fragment, capsys, out)


def test_unwritable_output_exit_code(slides, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["analyze", str(slides["homogeneous"]), "--out", str(blocker / "x"), *FAST]) == 4
    assert "cannot write into the output folder" in capsys.readouterr().err


def test_missing_mpp_can_be_given(slides, tmp_path, fast_toml):
    out = tmp_path / "out"
    assert main(["analyze", str(slides["no-mpp"]), "--out", str(out), "--mpp", "0.25", *FAST, *fast_toml,
                 "--tile-um", "16"]) == 0
    manifest = json.loads((out / "no-mpp" / "manifest.json").read_text())
    assert manifest["slide"]["mpp"] == 0.25 and manifest["slide"]["mpp_source"] == "caller"
    assert any("given by the caller" in w for w in manifest["warnings"])


@pytest.mark.slow
def test_demo_runs_on_the_bundled_real_slide(tmp_path, capsys):
    assert DEMO_SLIDE.is_file()
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--no-cache", "-q"]) == 0
    printed = capsys.readouterr().out
    run = out / "CMU-1-Small-Region"
    assert str(run.resolve()) in printed and "tissue.geojson" in printed
    assert validate_geojson_file(run / "tissue.geojson") == []
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["slide"]["mpp"] == pytest.approx(0.499) and manifest["tiles"]["kept"] > 400
    assert manifest["clusters"]["k"] >= 2
