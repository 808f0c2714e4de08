"""Shared fixtures: synthetic slides made on the fly, and the real data beside the repository."""

from __future__ import annotations

from pathlib import Path

import pytest

from tumls_qp.config import PipelineConfig, replace_in
from tumls_qp.testing import write_synthetic_slide

#: ../shared/data beside the repository (real public slides, MoNuSeg, QuPath examples).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder; tests that need it skip with the reason when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (clone the repository beside ../shared to run this test)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def wsi(shared_data: Path) -> Path:
    folder = shared_data / "wsi"
    if not folder.is_dir():
        pytest.skip(f"{folder} is missing")
    return folder


@pytest.fixture(scope="session")
def slides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small synthetic pyramidal slides (3072 x 2048 px at 0.5 µm/px), one per scene."""
    folder = tmp_path_factory.mktemp("slides")
    out = {}
    for layout in ("two-tissues", "homogeneous", "blank", "fluorescence", "dab"):
        out[layout] = write_synthetic_slide(folder / f"{layout}.tif", 3072, 2048, 0.5, layout=layout)
    out["no-mpp"] = write_synthetic_slide(folder / "no-mpp.tif", 1024, 1024, None)
    return out


@pytest.fixture()
def fast_config() -> PipelineConfig:
    """64 µm tiles (384 per synthetic slide), a few autoencoder epochs, no PDF: seconds, not minutes.

    The PDF report has its own tests (tests/test_pdf_report.py), with the default ``output.report``.
    """
    return replace_in(PipelineConfig(), **{"tiles.tile_um": 64.0, "embedding.max_epochs": 4,
                                           "embedding.device": "cpu", "output.report": False})
