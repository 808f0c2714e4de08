import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from tumls_qp.cli import main
from tumls_qp.errors import InvalidInputError
from tumls_qp.evaluation.tile_folder import read_tile_folder, resample_tile
from tumls_qp.outputs.run_folder import TileClustersManifest, read_manifest


def test_area_averaging_to_the_tile_size_is_exact_on_blocks():
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    image = np.repeat(np.repeat(blocks, 14, axis=0), 14, axis=1)  # 224 px, 14 px blocks
    tile, cropped = resample_tile(image, 16)
    assert not cropped and np.array_equal(tile, blocks)
    # A block pattern finer than the tile averages out to its mean.
    checker = np.indices((224, 224)).sum(axis=0) % 2 * 200
    tile, _ = resample_tile(np.repeat(checker[..., None], 3, axis=2).astype(np.uint8), 8)
    assert np.all(np.abs(tile.astype(int) - 100) <= 1)
    wide = np.zeros((100, 160, 3), np.uint8)
    wide[:, 30:130] = 255  # the centred 100 x 100 square is white
    tile, cropped = resample_tile(wide, 8)
    assert cropped and (tile == 255).all()


def _tile(colour, seed, size=48):
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 12, (size, size, 3))
    return np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)


def _folder(root, n=12):
    root.mkdir()
    for i in range(n):
        Image.fromarray(_tile((236, 160, 196), i)).save(root / f"pink{i:02d}.png")
        Image.fromarray(_tile((120, 60, 150), 100 + i)).save(root / f"purple{i:02d}.jpg", quality=95)
    (root / "labels.csv").write_text("file,label\n")
    (root / "README.md").write_text("not a tile")
    return root


def test_read_tile_folder_modes_and_errors(tmp_path):
    folder = tmp_path / "tiles"
    folder.mkdir()
    Image.fromarray(_tile((200, 100, 150), 0)).convert("RGBA").save(folder / "a.png")
    Image.fromarray(_tile((200, 100, 150), 1)).convert("L").save(folder / "b.tif")
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)).save(folder / "c.TIFF")
    (folder / "notes.txt").write_text("ignored")
    sub = folder / "more"
    sub.mkdir()
    Image.fromarray(_tile((200, 100, 150), 2, size=30)).save(sub / "d.jpeg")
    data = read_tile_folder(folder, 16)
    assert data.files == ("a.png", "b.tif", "c.TIFF") and data.tiles.shape == (3, 16, 16, 3)
    assert data.source_sizes.tolist() == [[48, 48], [48, 48], [64, 64]]
    assert read_tile_folder(folder, 16, recursive=True).files[-1] == "more/d.jpeg"
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(InvalidInputError, match="broken.jpg"):
        read_tile_folder(folder, 16)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidInputError, match="no tile images"):
        read_tile_folder(empty, 16)
    with pytest.raises(InvalidInputError, match="tile folder not found"):
        read_tile_folder(tmp_path / "missing", 16)
    with pytest.raises(InvalidInputError, match="tile_px"):
        read_tile_folder(folder, 4)


@pytest.fixture()
def quick(tmp_path):
    path = tmp_path / "quick.toml"
    path.write_text("seed = 3\n[embedding]\nmax_epochs = 2\ncontrastive_steps = 2\nvade_epochs = 2\nbatch_size = 16\n"
                    "device = \"cpu\"\n")
    return ["--config", str(path), "-q"]


def test_cluster_tiles_writes_the_result_folder(tmp_path, quick, capsys):
    folder = _folder(tmp_path / "tiles")
    out = tmp_path / "result"
    assert main(["cluster-tiles", str(folder), "--out", str(out), "--tile-px", "8", "--k", "2", *quick]) == 0
    assert "24 tiles, tumls-ae embedding, 2 cluster(s) (user)" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {"clusters.csv", "representatives.csv", "training.csv", "embeddings.npz",
                                               "embedding_colours.png", "model.pt", "model.json", "config.toml",
                                               "manifest.json"}
    with open(out / "clusters.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["file", "cluster", "uncertainty", "distance"]
    assert len(rows) == 24 and all(0 <= float(r["uncertainty"]) <= 1 for r in rows)
    # Pink and purple tiles are told apart.
    by_colour = {c: {r["cluster"] for r in rows if r["file"].startswith(c)} for c in ("pink", "purple")}
    assert len(by_colour["pink"]) == 1 and len(by_colour["purple"]) == 1 and by_colour["pink"] != by_colour["purple"]
    manifest = read_manifest(out)
    assert isinstance(manifest, TileClustersManifest) and json.loads((out / "manifest.json").read_text())["kind"] == \
        "cluster-tiles"
    assert manifest.tiles.n == 24 and manifest.seed == 3 and manifest.clusters.tiles_per_cluster == (12, 12)
    assert manifest.tiles.tile_px == 8 and manifest.clusters.embedding_colours in ("pca", "umap")
    assert manifest.embedding.method == "tumls-ae" and manifest.embedding.epochs == 2
    assert manifest.clusters.k_votes == {} and manifest.clusters.runner_up is None  # k was given
    with np.load(out / "embeddings.npz") as npz:
        assert npz["latents"].shape == (24, 256) and npz["files"].tolist() == [r["file"] for r in rows]
    # A re-run replaces the earlier result; a folder that is not a result is never replaced.
    assert main(["cluster-tiles", str(folder), "--out", str(out), "--tile-px", "8", *quick]) == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert main(["cluster-tiles", str(folder), "--out", str(folder), *quick]) == 4
    assert "not an earlier cluster-tiles result" in capsys.readouterr().err
    assert main(["cluster-tiles", str(tmp_path / "nothing"), "--out", str(tmp_path / "r2"), *quick]) == 3


@pytest.mark.parametrize("method", ["handcrafted", "textons", "vade"])
def test_cluster_tiles_with_another_embedding(tmp_path, quick, capsys, method):
    folder = _folder(tmp_path / "tiles")
    out = tmp_path / "result"
    assert main(["cluster-tiles", str(folder), "--out", str(out), "--embedding", method, "--mpp", "0.5", *quick]) == 0
    assert f"24 tiles, {method} embedding" in capsys.readouterr().out
    manifest = read_manifest(out)
    assert manifest.embedding.method == method and json.loads((out / "model.json").read_text())["method"] == method
    assert manifest.embedding.view_mpp == pytest.approx(48 * 0.5 / 64)
    assert sum(manifest.clusters.k_votes.values()) == 10 or manifest.clusters.k_source.startswith("VaDE")
    with np.load(out / "embeddings.npz") as npz:
        assert len(npz["latents"]) == 24
        assert ("posterior" in npz) == (method == "vade")
    with open(out / "training.csv", newline="") as fh:
        header = next(csv.reader(fh))
    assert header == (["epoch", "pretrain_mse", "loss"] if method == "vade" else ["epoch", "loss"])


def test_cluster_tiles_bad_embedding_choices(tmp_path, quick, capsys):
    folder = _folder(tmp_path / "tiles")
    out = tmp_path / "result"
    with pytest.raises(SystemExit) as exc:
        main(["cluster-tiles", str(folder), "--out", str(out), "--embedding", "dino", *quick])
    assert exc.value.code == 2 and "invalid choice: 'dino'" in capsys.readouterr().err
    # 24 tiles are too few for contrastive learning (32): exit status 3, the number needed, nothing written.
    assert main(["cluster-tiles", str(folder), "--out", str(out), "--embedding", "contrastive", *quick]) == 3
    assert "needs at least 32 tissue tiles to learn from; this input has 24" in capsys.readouterr().err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.realdata
def test_cluster_tiles_on_real_lc25000_tiles(shared_data, tmp_path, quick):
    source = shared_data / "lc25000_224"
    if not source.is_dir():
        pytest.skip(f"{source} is missing")
    with open(source / "labels.csv", newline="") as fh:
        labels = list(csv.DictReader(fh))
    chosen = [r for r in labels if r["label"] == "colon_aca"][:12] + [r for r in labels if r["label"] == "lung_n"][:12]
    folder = tmp_path / "lc"
    folder.mkdir()
    for row in chosen:
        shutil.copy(source / row["file"], folder / row["file"])
    shutil.copy(source / "labels.csv", folder / "labels.csv")  # not an image: ignored
    out = tmp_path / "out"
    assert main(["cluster-tiles", str(folder), "--out", str(out), "--tile-px", "16", *quick]) == 0
    with open(out / "clusters.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["file"] for r in rows) == sorted(r["file"] for r in chosen)
    manifest = read_manifest(out)
    assert manifest.tiles.source_sizes == ("224x224",) and manifest.clusters.k >= 1
