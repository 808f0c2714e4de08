import numpy as np
import pytest
import torch

from tumls_qp.config import EmbeddingConfig
from tumls_qp.tissue.embeddings import (
    Autoencoder,
    embed_tiles,
    load_checkpoint,
    reconstruct,
    resolve_device,
    save_checkpoint,
    train_autoencoder,
)
from tumls_qp.errors import ConfigError, DeviceError


def _striped_tiles(n=300, seed=0):
    """Two kinds of tiles (pink plain, purple dotted) with noise: structure an autoencoder can learn."""
    rng = np.random.default_rng(seed)
    tiles = np.empty((n, 16, 16, 3), np.uint8)
    for i in range(n):
        base = np.array([235, 160, 195]) if i % 2 else np.array([190, 120, 190])
        tile = np.broadcast_to(base, (16, 16, 3)).astype(float) + rng.normal(0, 6, (16, 16, 3))
        if i % 2 == 0:
            tile[rng.integers(0, 16, 20), rng.integers(0, 16, 20)] = (70, 40, 130)
        tiles[i] = np.clip(tile, 0, 255)
    return tiles


@pytest.mark.parametrize("tile_px", [8, 16, 32, 64])
def test_latent_is_2x2x64_for_every_tile_size(tile_px):
    model = Autoencoder(tile_px)
    x = torch.rand(3, 3, tile_px, tile_px)
    with torch.no_grad():
        assert model.encoder(x).shape == (3, 64, 2, 2)
        y = model(x)
    assert y.shape == x.shape
    assert 0 <= float(y.min()) and float(y.max()) <= 1


def test_training_learns_and_records_history():
    tiles = _striped_tiles()
    trained = train_autoencoder(tiles, EmbeddingConfig(max_epochs=15, patience=15, device="cpu"), seed=0)
    h = trained.history
    assert h.n_tiles == {"train": 210, "val": 45, "test": 45}
    assert len(h.train_mse) == len(h.val_mse) == 15
    assert h.val_mse[h.best_epoch - 1] == min(h.val_mse)
    assert h.train_mse[-1] < h.train_mse[0] / 2
    assert set(h.mse) == {"train", "val", "test"} and all(0 < v < 0.05 for v in h.mse.values())
    latents = embed_tiles(trained, tiles)
    assert latents.shape == (300, 256) and latents.dtype == np.float32
    # The two kinds of tiles are apart in latent space.
    even, odd = latents[::2], latents[1::2]
    between = np.linalg.norm(even.mean(0) - odd.mean(0))
    within = (np.linalg.norm(even - even.mean(0), axis=1).mean() + np.linalg.norm(odd - odd.mean(0), axis=1).mean()) / 2
    assert between > within


def test_early_stopping_stops():
    tiles = _striped_tiles(60)
    trained = train_autoencoder(tiles, EmbeddingConfig(max_epochs=200, patience=2, device="cpu"), seed=1)
    assert trained.history.early_stopped and len(trained.history.val_mse) < 200
    assert len(trained.history.val_mse) - trained.history.best_epoch == 2


def test_seeded_training_is_reproducible():
    tiles = _striped_tiles(80)
    cfg = EmbeddingConfig(max_epochs=2, device="cpu")
    a = embed_tiles(train_autoencoder(tiles, cfg, seed=3), tiles)
    b = embed_tiles(train_autoencoder(tiles, cfg, seed=3), tiles)
    c = embed_tiles(train_autoencoder(tiles, cfg, seed=4), tiles)
    assert np.allclose(a, b, atol=1e-5)
    assert not np.allclose(a, c, atol=1e-3)


def test_too_few_tiles():
    with pytest.raises(ConfigError, match="too few to split"):
        train_autoencoder(_striped_tiles(4), EmbeddingConfig(device="cpu"), seed=0)


def test_device_resolution_never_falls_back_silently():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA device is available"):
            resolve_device("cuda")
    with pytest.raises(ConfigError):
        resolve_device("tpu")


@pytest.mark.gpu
def test_cuda_and_cpu_agree():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    tiles = _striped_tiles(64)
    model = Autoencoder(16).eval()
    cpu = embed_tiles(model, tiles, device="cpu")
    gpu = embed_tiles(model, tiles, device="cuda")
    assert np.allclose(cpu, gpu, atol=1e-3)


def _torchvision_like_state(model: Autoencoder) -> dict:
    """A state dict with torchvision ResNet18's names and shapes for the layers we share, plus others."""
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in model.encoder.state_dict().items()
             if k.startswith(("conv1.", "bn1.", "layer1."))}
    state["layer2.0.conv1.weight"] = torch.randn(128, 64, 3, 3)
    state["fc.weight"] = torch.randn(1000, 512)
    return state


def test_init_from_resnet18_file(tmp_path):
    source = Autoencoder(16)
    state = _torchvision_like_state(source)
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    cfg = EmbeddingConfig(max_epochs=1, device="cpu", init_resnet18=str(path), learning_rate=1e-9)
    trained = train_autoencoder(_striped_tiles(40), cfg, seed=0)
    assert trained.history.initialised_from == str(path)
    # With a negligible learning rate the copied convolution is (almost) unchanged.
    assert torch.allclose(trained.model.encoder.conv1.weight, state["conv1.weight"], atol=1e-4)


def test_init_from_bad_files(tmp_path):
    missing = EmbeddingConfig(device="cpu", init_resnet18=str(tmp_path / "none.pth"))
    with pytest.raises(ConfigError, match="no such file"):
        train_autoencoder(_striped_tiles(40), missing, seed=0)
    garbage = tmp_path / "garbage.pth"
    garbage.write_text("not torch")
    with pytest.raises(ConfigError, match="cannot read"):
        train_autoencoder(_striped_tiles(40), EmbeddingConfig(device="cpu", init_resnet18=str(garbage)), seed=0)
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(ConfigError, match="not a torchvision ResNet18 state dict"):
        train_autoencoder(_striped_tiles(40), EmbeddingConfig(device="cpu", init_resnet18=str(wrong)), seed=0)


def test_checkpoint_round_trip(tmp_path):
    tiles = _striped_tiles(40)
    trained = train_autoencoder(tiles, EmbeddingConfig(max_epochs=1, device="cpu"), seed=0)
    save_checkpoint(trained.model, tmp_path, {"note": "x"})
    assert (tmp_path / "model.pt").is_file() and (tmp_path / "model.json").is_file()
    model, meta = load_checkpoint(tmp_path)
    assert meta["tile_px"] == 16 and meta["note"] == "x" and meta["latent"] == [64, 2, 2]
    assert np.allclose(embed_tiles(model, tiles, device="cpu"), embed_tiles(trained, tiles), atol=1e-5)
    assert reconstruct(model, tiles[:3]).shape == (3, 16, 16, 3)
