"""embedding.method = "pretrained": a timm architecture with a checkpoint file the test saves from a random init."""

from __future__ import annotations

import builtins
import csv
import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

timm = pytest.importorskip("timm", reason="the pretrained extra is not installed: pip install 'tumls-qp[pretrained]'")

from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from tumls_qp.cli import main  # noqa: E402
from tumls_qp.config import EmbeddingConfig, replace_in  # noqa: E402
from tumls_qp.errors import ConfigError, DeviceError, InvalidInputError  # noqa: E402
from tumls_qp.outputs.run_folder import read_run  # noqa: E402
from tumls_qp.pipeline import analyze  # noqa: E402
from tumls_qp.tissue.embeddings import MIN_TILES, TileImages, fit_embedding, load_encoder  # noqa: E402
from tumls_qp.tissue.embeddings.pretrained import encode, load_pretrained, read_checkpoint  # noqa: E402

#: A tiny timm model (0.4 M parameters, 160 px input) for the plumbing; resnet18 for the real tiles.
TINY = "test_resnet"


def _save(arch: str, seed: int, path: Path, wrap: str | None = None) -> Path:
    torch.manual_seed(seed)
    state = timm.create_model(arch, pretrained=False).state_dict()  # with its classifier head, as labs save them
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    else:
        torch.save({wrap: state, "epoch": 7} if wrap else state, path)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("checkpoints")
    return {
        "r18": _save("resnet18", 0, d / "resnet18.pth"),
        "r18_st": _save("resnet18", 0, d / "resnet18.safetensors"),
        "r18_other": _save("resnet18", 1, d / "resnet18-other.pth"),
        "tiny": _save(TINY, 0, d / "tiny.pth"),
        "tiny_nested": _save(TINY, 0, d / "tiny-nested.pt", wrap="state_dict"),
        "tiny_model": _save(TINY, 0, d / "tiny-model.bin", wrap="model"),
        "tiny_st": _save(TINY, 0, d / "tiny.safetensors"),
    }


def _cfg(checkpoint: Path, encoder: str = TINY, **kw) -> EmbeddingConfig:
    return EmbeddingConfig(method="pretrained", encoder=encoder, checkpoint=str(checkpoint), device="cpu", **kw)


def _views(n: int = 12, px: int = 64, seed: int = 0) -> TileImages:
    rng = np.random.default_rng(seed)
    return TileImages(views=rng.integers(0, 256, (n, px, px, 3), dtype=np.uint8), view_mpp=2.0)


@pytest.fixture(scope="module")
def lc25000_views(shared_data) -> TileImages:
    """24 real H&E tiles of the shared LC25000 set (4 of each class), 224 px at 0.5 µm/px as the model expects."""
    folder = shared_data / "lc25000_224"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent (the shared LC25000 tiles)")
    with open(folder / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    label = next(k for k in rows[0] if k != "file")
    picked = [r for cls in sorted({r[label] for r in rows}) for r in [r for r in rows if r[label] == cls][:4]]
    views = np.stack([np.asarray(Image.open(folder / r["file"]).convert("RGB").resize((224, 224))) for r in picked])
    return TileImages(views=views, view_mpp=0.5)


# --- real tiles, real weights file ---------------------------------------------------------------------------------

def test_resnet18_checkpoint_embeds_real_tiles_deterministically(ckpt, lc25000_views, tmp_path):
    cfg = _cfg(ckpt["r18"], "resnet18", view_um=112.0, view_px=224)
    e = fit_embedding(lc25000_views, cfg, seed=0)
    assert e.method == "pretrained" and e.vectors.shape == (len(lc25000_views), 512) and e.vectors.dtype == np.float32
    assert np.isfinite(e.vectors).all() and e.posterior is None
    assert e.vectors.std(axis=0).max() > 0  # the tiles differ
    h = e.history
    assert h["architecture"] == "resnet18" and h["checkpoint"] == "resnet18.pth" and h["input_px"] == 224
    assert len(h["checkpoint_sha256"]) == 64 and h["epochs"] == 0 and set(h["dropped_keys"]) == {"fc.weight", "fc.bias"}
    # Deterministic; the same weights from safetensors give the same vectors.
    np.testing.assert_array_equal(fit_embedding(lc25000_views, cfg, seed=5).vectors, e.vectors)
    st = fit_embedding(lc25000_views, _cfg(ckpt["r18_st"], "resnet18", view_um=112.0, view_px=224), seed=0)
    np.testing.assert_allclose(st.vectors, e.vectors, rtol=1e-5, atol=1e-6)
    # Another random init in the file gives other vectors: the weights really come from the file.
    other = fit_embedding(lc25000_views, _cfg(ckpt["r18_other"], "resnet18", view_um=112.0, view_px=224), seed=0)
    assert not np.allclose(other.vectors, e.vectors, atol=1e-3)
    # The encoder saves a reference to its file and reads it back.
    e.encoder.save(tmp_path)
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["method"] == "pretrained" and meta["checkpoint_sha256"] == h["checkpoint_sha256"]
    assert (tmp_path / "model.pt").stat().st_size < 10_000  # the weights are not copied
    np.testing.assert_array_equal(load_encoder(tmp_path).embed(lc25000_views), e.vectors)


# --- formats and plumbing ------------------------------------------------------------------------------------------

def test_every_checkpoint_format_gives_the_same_vectors(ckpt):
    images = _views(150)
    calls = []
    ref = fit_embedding(images, _cfg(ckpt["tiny"]), 0, progress=lambda done, total: calls.append((done, total))).vectors
    assert calls == [(1, 3), (2, 3), (3, 3)]  # progress per batch of 64 views
    assert ref.shape == (150, timm.create_model(TINY, num_classes=0).num_features)
    for name in ("tiny_nested", "tiny_model", "tiny_st"):
        np.testing.assert_allclose(fit_embedding(images, _cfg(ckpt[name]), 0).vectors, ref, rtol=1e-5, atol=1e-6)


def test_views_are_resized_to_the_input_side_and_normalised_the_models_way(ckpt):
    net = load_pretrained(TINY, ckpt["tiny"])
    data = timm.data.resolve_model_data_config(timm.create_model(TINY, num_classes=0))
    assert net.input_px == 160 == data["input_size"][-1] and net.mean == data["mean"] and net.std == data["std"]
    images = _views(4, px=160)
    direct = encode(net, images.views, torch.device("cpu"))
    x = (torch.from_numpy(images.views).permute(0, 3, 1, 2).float() / 255 - torch.tensor(net.mean).view(1, 3, 1, 1)) \
        / torch.tensor(net.std).view(1, 3, 1, 1)
    with torch.no_grad():
        np.testing.assert_allclose(direct, net.model(x).numpy(), rtol=1e-4, atol=1e-5)
    small = encode(net, _views(4, px=64).views, torch.device("cpu"))  # resized, not refused
    assert small.shape == direct.shape


def test_nothing_reaches_the_network(ckpt, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    load_pretrained("vit_small_patch16_224.augreg_in21k", _save("vit_small_patch16_224", 0,
                                                                ckpt["tiny"].parent / "vits.safetensors"))


# --- bad input -----------------------------------------------------------------------------------------------------

def test_missing_or_unreadable_checkpoints_are_named(ckpt, tmp_path):
    images = _views()
    with pytest.raises(ConfigError, match=r"embedding.checkpoint = .*none.pth' does not exist"):
        fit_embedding(images, _cfg(tmp_path / "none.pth"), 0)
    with pytest.raises(ConfigError, match="is a folder"):
        fit_embedding(images, _cfg(tmp_path), 0)
    for name, data in (("notes.pth", b"these are not weights\n"), ("empty.safetensors", b""),
                       ("cut.pth", ckpt["tiny"].read_bytes()[:5000]),
                       ("cut.safetensors", ckpt["tiny_st"].read_bytes()[:5000])):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ConfigError, match=r"cannot be read as a torch state dict \(.pth, .pt, .bin\) or a "
                                              "safetensors file"):
            fit_embedding(images, _cfg(tmp_path / name), 0)
    torch.save(timm.create_model(TINY), tmp_path / "pickled-model.pth")  # a whole model, not its weights
    with pytest.raises(ConfigError, match=r"holds Python objects besides tensors .* save the model's state_dict"):
        fit_embedding(images, _cfg(tmp_path / "pickled-model.pth"), 0)
    torch.save({"weights": 3}, tmp_path / "numbers.pth")
    with pytest.raises(ConfigError, match="is not a state dict: weights are not named tensors"):
        read_checkpoint(tmp_path / "numbers.pth")
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(ConfigError, match="holds no state dict"):
        read_checkpoint(tmp_path / "list.pth")


def test_a_checkpoint_that_does_not_fit_the_architecture_is_named(ckpt, tmp_path):
    images = _views()
    with pytest.raises(ConfigError, match=r"does not fit embedding.encoder = 'resnet34': \d+ weights missing from the "
                                          r"file \(layer1.2.conv1.weight, .* and \d+ more\)"):
        fit_embedding(images, _cfg(ckpt["r18"], "resnet34"), 0)
    with pytest.raises(ConfigError, match=r"does not fit embedding.encoder = 'test_resnet'.*unexpected \(.*layer"):
        fit_embedding(images, _cfg(ckpt["r18"], TINY), 0)
    state = torch.load(ckpt["tiny"], weights_only=True)
    state["conv1.0.weight"] = torch.zeros(3, 3, 3, 3)
    torch.save(state, tmp_path / "reshaped.pth")
    with pytest.raises(ConfigError, match=r"conv1.0.weight has shape \(3, 3, 3, 3\) in the file, \(\d+, 3, 3, 3\) in the "
                                          "architecture"):
        fit_embedding(images, _cfg(tmp_path / "reshaped.pth"), 0)


def test_unknown_or_downloading_architectures_are_refused(ckpt):
    with pytest.raises(ConfigError, match="embedding.encoder = 'resnet181' is not an architecture timm .* knows; did "
                                          "you mean resnet18"):
        fit_embedding(_views(), _cfg(ckpt["tiny"], "resnet181"), 0)
    for name in ("hf-hub:MahmoodLab/UNI", "timm/resnet18.a1_in1k", ""):
        with pytest.raises(ConfigError, match="embedding.encoder must be a timm architecture name"):
            _cfg(ckpt["tiny"], name)
    with pytest.raises(ConfigError, match="embedding.checkpoint must be set for embedding.method = 'pretrained'"):
        EmbeddingConfig(method="pretrained", encoder="resnet18")


@pytest.mark.gpu
def test_cuda_and_cpu_agree(ckpt):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    images = _views(70)
    cpu = fit_embedding(images, _cfg(ckpt["tiny"]), 0)
    gpu = fit_embedding(images, EmbeddingConfig(method="pretrained", encoder=TINY, checkpoint=str(ckpt["tiny"]),
                                                device="cuda"), 0)
    assert gpu.history["device"].startswith("cuda")
    np.testing.assert_allclose(gpu.vectors, cpu.vectors, rtol=1e-2, atol=1e-3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_asked_for_without_one_is_a_clear_error(ckpt):
    with pytest.raises(DeviceError, match="--device cuda was asked for, but no CUDA device is available"):
        fit_embedding(_views(), EmbeddingConfig(method="pretrained", encoder=TINY, checkpoint=str(ckpt["tiny"]),
                                                device="cuda"), 0)


def test_too_few_tiles(ckpt):
    need = MIN_TILES["pretrained"]
    with pytest.raises(InvalidInputError, match=f"needs at least {need} tissue tiles.*has {need - 1}"):
        fit_embedding(_views(need - 1), _cfg(ckpt["tiny"]), 0)


def test_without_timm_the_error_names_the_extra(ckpt, monkeypatch, tmp_path, capsys):
    real_import = builtins.__import__

    def no_timm(name, *args, **kwargs):
        if name == "timm" or name.startswith("timm."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_timm)
    with pytest.raises(ConfigError, match=r"needs timm, which is not installed .*pip install 'tumls-qp\[pretrained\]'"):
        fit_embedding(_views(), _cfg(ckpt["tiny"]), 0)
    folder = tmp_path / "tiles"
    folder.mkdir()
    for i in range(20):
        Image.fromarray(_views(1, seed=i).views[0]).save(folder / f"t{i}.png")
    assert main(["cluster-tiles", str(folder), "--out", str(tmp_path / "out"), "--embedding", "pretrained",
                 "--encoder", TINY, "--checkpoint", str(ckpt["tiny"]), "-q"]) == 2
    assert "pip install 'tumls-qp[pretrained]'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_changed_checkpoint_is_not_used_in_its_place(ckpt, tmp_path):
    path = tmp_path / "w.pth"
    path.write_bytes(ckpt["tiny"].read_bytes())
    e = fit_embedding(_views(), _cfg(path), 0)
    e.encoder.save(tmp_path)
    _save(TINY, 1, path)
    with pytest.raises(ConfigError, match="has changed since this encoder was used"):
        load_encoder(tmp_path)


# --- the commands --------------------------------------------------------------------------------------------------

def test_cluster_tiles_with_a_pretrained_encoder(ckpt, tmp_path, capsys):
    folder = tmp_path / "tiles"
    folder.mkdir()
    for i in range(24):
        colour = (200, 120, 190) if i % 2 else (240, 200, 220)
        img = np.clip(np.array(colour) + np.random.default_rng(i).normal(0, 8, (48, 48, 3)), 0, 255)
        Image.fromarray(img.astype(np.uint8)).save(folder / f"t{i:02d}.png")
    args = ["cluster-tiles", str(folder), "--embedding", "pretrained", "--encoder", TINY, "--device", "cpu", "-q"]
    assert main([*args, "--out", str(tmp_path / "out"), "--checkpoint", str(ckpt["tiny"]), "--k", "2"]) == 0
    assert "pretrained embedding, 2 cluster(s)" in capsys.readouterr().out
    m = read_run(tmp_path / "out", kinds=("cluster-tiles",)).manifest
    assert m.embedding.method == "pretrained" and m.embedding.architecture == TINY
    assert m.embedding.checkpoint == "tiny.pth" and len(m.embedding.checkpoint_sha256) == 64
    assert main([*args, "--out", str(tmp_path / "bad"), "--checkpoint", str(tmp_path / "none.pth")]) == 2
    assert "embedding.checkpoint" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_analyze_records_the_encoder_and_reuses_the_cache(ckpt, slides, fast_config, tmp_path, capsys):
    path = tmp_path / "w.safetensors"
    path.write_bytes(ckpt["tiny_st"].read_bytes())
    config = replace_in(fast_config, **{"clusters.k": 2, "embedding.method": "pretrained", "embedding.encoder": TINY,
                                        "embedding.checkpoint": str(path), "nuclei.enabled": False,
                                        "output.report": True})
    cache = tmp_path / "cache"
    [result] = analyze([slides["two-tissues"]], tmp_path / "a", config, cache_dir=cache)
    run = read_run(result.run_dir)
    m = run.manifest
    assert m == result.manifest  # the new manifest fields round-trip
    assert m.embedding.method == "pretrained" and m.embedding.architecture == TINY and m.embedding.cache == "miss"
    assert m.embedding.checkpoint == "w.safetensors" and m.embedding.checkpoint_sha256 == json.loads(
        (run.path / "model.json").read_text())["checkpoint_sha256"]
    assert m.embedding.dim == timm.create_model(TINY, num_classes=0).num_features
    assert (run.path / "report.pdf").is_file()
    [again] = analyze([slides["two-tissues"]], tmp_path / "b", config, cache_dir=cache)
    assert again.manifest.embedding.cache == "hit"
    _save(TINY, 1, path)  # another file at the same path: not the cached one
    [third] = analyze([slides["two-tissues"]], tmp_path / "c", config, cache_dir=cache)
    assert third.manifest.embedding.cache == "miss"
    assert third.manifest.embedding.checkpoint_sha256 != m.embedding.checkpoint_sha256
    # A missing checkpoint is refused before any slide is read, exit status 2, nothing written.
    bad = tmp_path / "bad.toml"
    bad.write_text(f'[embedding]\nmethod = "pretrained"\nencoder = "{TINY}"\ncheckpoint = "{tmp_path / "x.pth"}"\n')
    assert main(["analyze", str(slides["two-tissues"]), "--out", str(tmp_path / "d"), "--config", str(bad),
                 "--no-cache", "-q"]) == 2
    assert "embedding.checkpoint" in capsys.readouterr().err and not (tmp_path / "d").exists()
