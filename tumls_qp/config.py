"""Configuration: one frozen dataclass per pipeline stage, and TOML in and out.

The effective configuration is saved as ``config.toml`` in every run folder, and
``tumls-qp config`` prints the defaults. Every option is documented on its field.
Values are checked when a config is built; a bad value raises
:class:`~tumls_qp.errors.ConfigError` naming ``section.key`` and what was received.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = [
    "SlideConfig",
    "TileConfig",
    "EmbeddingConfig",
    "ClusterConfig",
    "RegionConfig",
    "RepresentativeConfig",
    "NucleiConfig",
    "GlandConfig",
    "OutputConfig",
    "PipelineConfig",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "dump_config",
    "replace_in",
]


def _require(ok: bool, name: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{name} must be {expected}; got {value!r}")


@dataclass(frozen=True)
class SlideConfig:
    """How slides are opened."""

    #: Pixel size at level 0 in µm/px, used when the file does not state one.
    #: A value in the file wins unless ``mpp_override`` is true.
    mpp: float | None = None
    #: Use ``mpp`` even when the file states a pixel size.
    mpp_override: bool = False
    #: Analyse slides that do not look like brightfield H&E (fluorescence, IHC, unstained).
    #: The method assumes H&E: results on other stains are not meaningful.
    allow_non_he: bool = False

    def __post_init__(self) -> None:
        if self.mpp is not None:
            _require(
                isinstance(self.mpp, (int, float)) and math.isfinite(self.mpp) and 0.01 <= self.mpp <= 100,
                "slide.mpp", self.mpp, "a pixel size in µm/px between 0.01 and 100",
            )
        _require(not self.mpp_override or self.mpp is not None, "slide.mpp_override", self.mpp_override,
                 "false unless slide.mpp is set")


@dataclass(frozen=True)
class TileConfig:
    """The tile grid and background filtering (the "tissue" level)."""

    #: Side of a square tile in µm. 256 µm is the TUMLS default: a 1024 px tile at 0.25 µm/px.
    tile_um: float = 256.0
    #: Side of a tile in pixels at the tissue level; the tissue level's pixel size is
    #: ``tile_um / tile_px`` µm/px (TUMLS: 16 px, i.e. 64x coarser than 0.25 µm/px).
    #: One of 8, 16, 32, 64.
    tile_px: int = 16
    #: A tile is kept when at least this fraction of its pixels is tissue in the tissue mask.
    min_tissue_fraction: float = 0.5
    #: A tile is dropped as an artefact when more than this fraction of its pixels is
    #: near-black (pen marks, folds, scanner borders: luminance below ``dark_luminance``).
    max_dark_fraction: float = 0.25
    #: Luminance (0-255) under which a pixel counts as near-black.
    dark_luminance: float = 40.0
    #: Smallest tissue fragment kept in the tissue mask, in µm² (smaller specks are dust or debris).
    min_fragment_um2: float = 20000.0
    #: Fewest tissue tiles an analysis accepts; below this the tile size is too large for the slide.
    min_tiles: int = 20

    def __post_init__(self) -> None:
        _require(_is_number(self.tile_um) and 1 <= self.tile_um <= 100_000, "tiles.tile_um", self.tile_um,
                 "a tile side in µm between 1 and 100000")
        _require(self.tile_px in (8, 16, 32, 64), "tiles.tile_px", self.tile_px, "one of 8, 16, 32, 64")
        _require(_is_number(self.min_tissue_fraction) and 0 < self.min_tissue_fraction <= 1,
                 "tiles.min_tissue_fraction", self.min_tissue_fraction, "a fraction in (0, 1]")
        _require(_is_number(self.max_dark_fraction) and 0 <= self.max_dark_fraction <= 1,
                 "tiles.max_dark_fraction", self.max_dark_fraction, "a fraction in [0, 1]")
        _require(_is_number(self.dark_luminance) and 0 <= self.dark_luminance <= 255,
                 "tiles.dark_luminance", self.dark_luminance, "a luminance in [0, 255]")
        _require(_is_number(self.min_fragment_um2) and self.min_fragment_um2 >= 0,
                 "tiles.min_fragment_um2", self.min_fragment_um2, "an area in µm² >= 0")
        _require(isinstance(self.min_tiles, int) and self.min_tiles >= 2, "tiles.min_tiles", self.min_tiles,
                 "an integer >= 2")

    @property
    def lowres_mpp(self) -> float:
        """Pixel size of the tissue level in µm/px."""
        return self.tile_um / self.tile_px


EMBEDDING_METHODS = ("tumls-ae", "contrastive", "vade", "handcrafted", "textons", "pretrained")
#: The ``embedding`` options that name a weights file a run reads (the server checks each against its roots;
#: the embedding cache keys on each file's size and modification time).
EMBEDDING_FILES = ("init_resnet18", "checkpoint")


@dataclass(frozen=True)
class EmbeddingConfig:
    """How tiles become vectors (``tissue/embeddings``): the method and its training."""

    #: ``tumls-ae``: the TUMLS autoencoder on the tissue-level tiles (``tiles.tile_px``), as the paper
    #: describes it. ``contrastive``: self-supervised contrastive learning (SimCLR) on the tiles' views with
    #: stain, orientation, crop and blur augmentations, so that it sees tissue architecture rather than
    #: colour. ``vade``: variational deep embedding with a Gaussian-mixture prior (k by BIC, a posterior per
    #: tile). ``handcrafted``: stain statistics, texture at two scales and nucleus density, no training.
    #: ``textons``: histograms of a texton dictionary (rotation-invariant filter responses of the
    #: haematoxylin and eosin images at 2-16 µm, k-means) learned from the run's own pixels; no network.
    #: ``pretrained``: your own encoder, no training: the timm architecture ``encoder`` with the weights in
    #: ``checkpoint`` (e.g. a histology foundation model your lab has); the vector is its pooled output.
    #: It needs the ``pretrained`` extra: pip install 'tumls-qp[pretrained]'.
    #: reports/embeddings.md compares them.
    method: str = "tumls-ae"
    #: Side in µm of the square field in which the view methods (all but ``tumls-ae``) see each tile,
    #: centred on the tile (larger than the tile: the tile with its surroundings).
    view_um: float = 256.0
    #: Side of that field in pixels (its pixel size is ``view_um / view_px``; 64 px of 256 µm is 4 µm/px).
    #: ``pretrained``: set it to the encoder's input side (224 px for most models; views of another size are
    #: resized to it) and ``view_um`` to that side times the pixel size the encoder was trained at
    #: (224 px at 0.5 µm/px: view_um = 112).
    view_px: int = 64
    #: ``pretrained``: the architecture, by its timm name (e.g. ``resnet50``, ``vit_large_patch16_224``;
    #: ``timm.list_models()`` lists them), optionally with a timm tag whose configuration gives the input size
    #: and normalisation (``vit_small_patch16_224.augreg_in21k``). It is built headless (the pooled features)
    #: and nothing is ever downloaded: hub names (``hf-hub:...``) are refused.
    encoder: str | None = None
    #: ``pretrained``: the weights of ``encoder``, a local file: a torch state dict (``.pth``, ``.pt``, ``.bin``,
    #: also nested under ``state_dict`` or ``model``) or ``.safetensors``. Classifier-head weights are dropped;
    #: every other key must fit the architecture. The run records its file name and SHA-256, and reads it
    #: again from this path when its encoder is reused (seeded clustering, dictionaries).
    checkpoint: str | None = None
    #: ``contrastive``: optimiser steps (batches of ``batch_size`` tiles, two views each), the same whatever
    #: the number of tiles (many passes over a small slide, part of one over a large one), so training costs
    #: the same on both.
    contrastive_steps: int = 400
    #: ``vade``: training epochs after its autoencoder pretraining.
    vade_epochs: int = 50
    #: ``vade``: learn from at most this many tiles (a seeded random subset; every tile is embedded). Its
    #: epochs pass over all the tiles it learns from, so this bounds its training on a large slide.
    vade_train_tiles: int = 2000
    #: ``auto`` (CUDA, then Apple MPS, then CPU), ``cpu``, ``cuda`` or ``mps``.
    #: Asking for a device that is not there is an error, never a silent fallback.
    device: str = "auto"
    #: Upper bound on training epochs; early stopping usually ends training before.
    max_epochs: int = 100
    #: Early stopping: stop after this many epochs without a better validation loss.
    patience: int = 10
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5
    #: Train / validation / test fractions of the tissue tiles.
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    #: ``tumls-ae``: train on at most this many tiles (a seeded random subset); all tiles are embedded.
    max_train_tiles: int = 200_000
    #: Optional torchvision-format ResNet18 state dict (``.pth``) to initialise the
    #: encoder's ``conv1``, ``bn1`` and ``layer1`` from. None: train from scratch.
    init_resnet18: str | None = None
    #: CPU threads torch may use (0: torch's default).
    num_threads: int = 0

    def __post_init__(self) -> None:
        _require(self.method in EMBEDDING_METHODS, "embedding.method", self.method,
                 f"one of {', '.join(EMBEDDING_METHODS)}")
        _require(_is_number(self.view_um) and 8 <= self.view_um <= 10_000, "embedding.view_um", self.view_um,
                 "a field side in µm between 8 and 10000")
        _require(isinstance(self.view_px, int) and not isinstance(self.view_px, bool) and 16 <= self.view_px <= 512,
                 "embedding.view_px", self.view_px, "an integer in [16, 512]")
        _require(isinstance(self.contrastive_steps, int) and not isinstance(self.contrastive_steps, bool)
                 and self.contrastive_steps >= 1, "embedding.contrastive_steps", self.contrastive_steps,
                 "an integer >= 1")
        _require(isinstance(self.vade_epochs, int) and not isinstance(self.vade_epochs, bool)
                 and self.vade_epochs >= 1, "embedding.vade_epochs", self.vade_epochs, "an integer >= 1")
        _require(isinstance(self.vade_train_tiles, int) and not isinstance(self.vade_train_tiles, bool)
                 and self.vade_train_tiles >= 20, "embedding.vade_train_tiles", self.vade_train_tiles,
                 "an integer >= 20 (VaDE needs at least 20 tiles)")
        if self.encoder is not None:
            _require(isinstance(self.encoder, str) and self.encoder.strip() == self.encoder != ""
                     and not any(c in self.encoder for c in ":/\\"), "embedding.encoder", self.encoder,
                     "a timm architecture name such as resnet50 (hub names would download: give the architecture "
                     "and a local embedding.checkpoint)")
        if self.checkpoint is not None:
            _require(isinstance(self.checkpoint, str) and self.checkpoint.strip() != "", "embedding.checkpoint",
                     self.checkpoint, "the path of a weights file")
        if self.method == "pretrained":
            _require(self.encoder is not None, "embedding.encoder", self.encoder,
                     "set for embedding.method = 'pretrained': the timm architecture of your checkpoint, e.g. resnet50")
            _require(self.checkpoint is not None, "embedding.checkpoint", self.checkpoint,
                     "set for embedding.method = 'pretrained': the path of the encoder's weights file")
        _require(self.device in ("auto", "cpu", "cuda", "mps"), "embedding.device", self.device,
                 "one of auto, cpu, cuda, mps")
        _require(isinstance(self.max_epochs, int) and self.max_epochs >= 1, "embedding.max_epochs",
                 self.max_epochs, "an integer >= 1")
        _require(isinstance(self.patience, int) and self.patience >= 1, "embedding.patience", self.patience,
                 "an integer >= 1")
        _require(isinstance(self.batch_size, int) and self.batch_size >= 2, "embedding.batch_size",
                 self.batch_size, "an integer >= 2")
        _require(_is_number(self.learning_rate) and 0 < self.learning_rate < 1, "embedding.learning_rate",
                 self.learning_rate, "a number in (0, 1)")
        _require(_is_number(self.weight_decay) and 0 <= self.weight_decay < 1, "embedding.weight_decay",
                 self.weight_decay, "a number in [0, 1)")
        _require(len(self.split) == 3 and all(_is_number(f) and f > 0 for f in self.split)
                 and abs(sum(self.split) - 1) < 1e-6, "embedding.split", self.split,
                 "three positive fractions (train, validation, test) that sum to 1")
        _require(isinstance(self.max_train_tiles, int) and self.max_train_tiles >= 10,
                 "embedding.max_train_tiles", self.max_train_tiles, "an integer >= 10")
        _require(isinstance(self.num_threads, int) and self.num_threads >= 0, "embedding.num_threads",
                 self.num_threads, "an integer >= 0")


@dataclass(frozen=True)
class ClusterConfig:
    """Tissues from the latents: k from the Ward dendrogram (TUMLS section 3.2), then k-means or graph clustering."""

    #: Number of tissues. None: chosen from the dendrogram (see ``clusters.choose_k``).
    k: int | None = None
    #: Smallest k the dendrogram rule may choose. 1 allows "one tissue only".
    k_min: int = 1
    #: Largest k the dendrogram rule may choose.
    k_max: int = 8
    #: Ward linkage is O(n²) in memory and time: above this many tiles it runs on a
    #: seeded random subset (k-means then runs on all tiles).
    linkage_max_tiles: int = 3000
    #: k-means restarts.
    n_init: int = 10
    #: ``kmeans``: k-means on the latents (TUMLS). ``graph``: the patch graph of the CDAC study
    #: (UnSeGArmaNet): tiles are nodes, spatial neighbours with similar latents are joined, and a small
    #: graph neural network trained with a modularity loss gives k soft assignments. With an embedding
    #: that has its own mixture (``vade``), ``kmeans`` leaves the assignment to the mixture.
    method: str = "kmeans"
    #: Graph clustering: tiles whose centres lie within this many tile sides are neighbours
    #: (1.5: the 8 surrounding tiles).
    graph_radius: float = 1.5
    #: Graph clustering: two neighbours are joined when the cosine similarity of their centred
    #: latents (the slide's mean latent subtracted) exceeds this.
    graph_similarity: float = 0.0
    #: Graph clustering: training steps of the graph network (full batch).
    graph_epochs: int = 300
    #: The automatic k is voted over this many random subsets of 80 % of the tiles (each
    #: chooses k from its own dendrogram and split test); the manifest and the report give the
    #: votes, so the runner-up k and how close it came are visible. 0: the tiles' own choice only.
    resamples: int = 10

    def __post_init__(self) -> None:
        if self.k is not None:
            _require(isinstance(self.k, int) and self.k >= 1, "clusters.k", self.k, "an integer >= 1 or unset")
        _require(isinstance(self.k_min, int) and self.k_min >= 1, "clusters.k_min", self.k_min, "an integer >= 1")
        _require(isinstance(self.k_max, int) and self.k_max >= self.k_min, "clusters.k_max", self.k_max,
                 f"an integer >= clusters.k_min ({self.k_min})")
        _require(isinstance(self.linkage_max_tiles, int) and self.linkage_max_tiles >= 50,
                 "clusters.linkage_max_tiles", self.linkage_max_tiles, "an integer >= 50")
        _require(isinstance(self.n_init, int) and self.n_init >= 1, "clusters.n_init", self.n_init,
                 "an integer >= 1")
        _require(self.method in ("kmeans", "graph"), "clusters.method", self.method, "one of kmeans, graph")
        _require(_is_number(self.graph_radius) and 1 <= self.graph_radius <= 10, "clusters.graph_radius",
                 self.graph_radius, "a distance in tile sides in [1, 10]")
        _require(_is_number(self.graph_similarity) and -1 <= self.graph_similarity < 1,
                 "clusters.graph_similarity", self.graph_similarity, "a cosine similarity in [-1, 1)")
        _require(isinstance(self.graph_epochs, int) and not isinstance(self.graph_epochs, bool)
                 and 1 <= self.graph_epochs <= 100_000, "clusters.graph_epochs", self.graph_epochs,
                 "an integer in [1, 100000]")
        _require(isinstance(self.resamples, int) and not isinstance(self.resamples, bool)
                 and 0 <= self.resamples <= 1000, "clusters.resamples", self.resamples, "an integer in [0, 1000]")


@dataclass(frozen=True)
class RegionConfig:
    """Tissue regions whose borders follow the tissue below the tile size (see ``tissue.regions``)."""

    #: ``felzenszwalb``: multi-scale Felzenszwalb segmentation of the tissue-level image fused with the
    #: tiles' soft assignments, borders to a fraction of a tile; ``blocks``: each region is the union of
    #: its tiles (TUMLS as published; borders on the tile grid).
    method: str = "felzenszwalb"
    #: Felzenszwalb scales, one segmentation each, as the colour difference (0-255 RGB units) that a
    #: segment of one tile's area still merges across; larger scales give larger segments. The
    #: finest places the borders; the coarser ones give the finer segments their prior.
    scales: tuple[float, ...] = (0.5, 4.0, 16.0)
    #: Gaussian smoothing before segmentation, in tiles (0.05 = 0.8 px of a 16 px tile). The tissue-level
    #: image is already an average over many level-0 pixels; smoothing it more blurs the borders.
    sigma_tiles: float = 0.0
    #: Smallest segment, in tile areas (1/16: a quarter of a tile's side squared).
    min_segment_tiles: float = 0.0625
    #: Weight of a segment's prior (its coarser segment's answer and the interpolated tile evidence)
    #: against the evidence of the tiles it covers, per tile of its area. Small values let a segment of
    #: one tile's area keep what its tile says when the surrounding tissue says otherwise, so foci of
    #: about one tile survive.
    prior_weight: float = 0.5
    #: Regions smaller than this (in tile areas) join the neighbouring tissue they share most border with.
    min_region_tiles: float = 0.5

    def __post_init__(self) -> None:
        _require(self.method in ("felzenszwalb", "blocks"), "regions.method", self.method,
                 "one of felzenszwalb, blocks")
        _require(isinstance(self.scales, tuple) and 1 <= len(self.scales) <= 8
                 and all(_is_number(s) and 0 < s <= 10_000 for s in self.scales), "regions.scales", self.scales,
                 "1 to 8 numbers in (0, 10000]")
        _require(_is_number(self.sigma_tiles) and 0 <= self.sigma_tiles <= 1, "regions.sigma_tiles",
                 self.sigma_tiles, "a number of tiles in [0, 1]")
        _require(_is_number(self.min_segment_tiles) and 0 < self.min_segment_tiles <= 1,
                 "regions.min_segment_tiles", self.min_segment_tiles, "an area in tiles in (0, 1]")
        _require(_is_number(self.prior_weight) and 0 <= self.prior_weight <= 100, "regions.prior_weight",
                 self.prior_weight, "a number in [0, 100]")
        _require(_is_number(self.min_region_tiles) and 0 <= self.min_region_tiles <= 100,
                 "regions.min_region_tiles", self.min_region_tiles, "an area in tiles in [0, 100]")


@dataclass(frozen=True)
class RepresentativeConfig:
    """The representative tiles of each tissue (confident, closest to its centroid) and their patches."""

    #: Representatives per tissue.
    n: int = 5
    #: Representatives are chosen among the tiles whose confidence (0-1, see ``tissue.clusters``)
    #: is at least this; a tissue with fewer such tiles completes its set with its next-closest tiles.
    min_confidence: float = 0.2
    #: Side in µm of the patch read at full resolution around each representative, centred on its
    #: tile whatever the tile size (256 µm: TUMLS's 1024 px at 0.25 µm/px).
    patch_um: float = 256.0

    def __post_init__(self) -> None:
        _require(isinstance(self.n, int) and 1 <= self.n <= 100, "representatives.n", self.n,
                 "an integer in [1, 100]")
        _require(_is_number(self.min_confidence) and 0 <= self.min_confidence < 1,
                 "representatives.min_confidence", self.min_confidence, "a confidence in [0, 1)")
        _require(_is_number(self.patch_um) and 8 <= self.patch_um <= 4096, "representatives.patch_um",
                 self.patch_um, "a side in µm between 8 and 4096")


@dataclass(frozen=True)
class NucleiConfig:
    """Classical nucleus segmentation of the representatives (TUMLS sections 3.2 and 4.2).

    No machine learning: stain deconvolution, Otsu thresholds and morphology. Every size
    is in µm (or µm²) and is converted with the tile's pixel size, so one setting serves
    every magnification.
    """

    #: Segment nuclei in the representative tiles.
    enabled: bool = True
    #: How many of each tissue's representatives get segmented, nearest to the centroid
    #: first. None: all of them (``representatives.n``).
    representatives: int | None = None
    #: Radius (µm) of the smallest nuclei to separate. The de-merging (mask 2) places one
    #: marker per haematoxylin blob found at radii from this to ``nucleus_radius_max_um``
    #: (nuclei are about 4-12 µm across in H&E: lymphocytes to large tumour nuclei).
    nucleus_radius_min_um: float = 2.0
    #: Radius (µm) of the largest nuclei to separate (the largest blob scale).
    nucleus_radius_max_um: float = 6.0
    #: Objects smaller than this (µm²) are debris or noise, not nuclei (about 3 µm across).
    min_area_um2: float = 8.0
    #: Nuclei (mask 2 instances) larger than this (µm²) are artefacts (folds, pen marks,
    #: dirt), not nuclei (about 22 µm across, beyond the largest tumour nuclei).
    max_area_um2: float = 400.0
    #: Standard deviation (µm) of the Gaussian that denoises the haematoxylin channel
    #: (pixel noise, the "grey noise" of TUMLS, chromatin texture).
    smoothing_um: float = 0.5
    #: Side (µm) of the blocks in which Otsu's nucleus threshold adapts to local staining
    #: (a few cells wide). 0: one threshold for the whole tile.
    threshold_block_um: float = 32.0
    #: Radius (µm) of the closing of mask 1 (bridges one-pixel gaps in nuclear outlines).
    closing_um: float = 0.5
    #: Radius (µm) of the opening of mask 1 (removes spurs and thin strands narrower than nuclei).
    opening_um: float = 1.0
    #: Side (µm) of the median filter that smooths mask 1 into mask 3.
    median_um: float = 2.0
    #: Largest pale nucleus interior (µm²) that joins its nucleus. Vesicular nuclei (a dark
    #: membrane around pale chromatin) threshold as a ring, often open where the membrane is
    #: faint; a pale region that such a ring encloses once gaps of up to 1.5 µm are bridged,
    #: and that has the nucleus' surround rather than other nuclei beyond the ring, is
    #: nuclear, and the de-merging does not cut the nucleus across it. 0: off.
    pale_interior_max_um2: float = 40.0
    #: A pixel is tissue, not background, when its optical density averaged over R, G and B
    #: exceeds this (white glass is below 0.05). Otsu's thresholds are computed on tissue pixels.
    tissue_od: float = 0.1
    #: A pixel whose colour range, max(R, G, B) - min(R, G, B) on 0-255, is below this and
    #: that is not white is achromatic: black or grey noise (dirt, pen, folds, scanner
    #: artefacts). H&E colours, even of the darkest nuclei, stay above it.
    achromatic_range: float = 18.0
    #: A stained pixel whose optical-density direction lies more than this angle (degrees)
    #: off the plane of the tile's haematoxylin and eosin vectors is not H&E (coloured ink,
    #: other dyes). Nearly all H&E pixels, nuclei included, stay within about 15°.
    max_off_stain_deg: float = 20.0
    #: Macenko: the stain vectors are the (alpha, 100 - alpha) percentiles of the angle of
    #: tissue pixels in the plane of the two main optical-density directions.
    macenko_alpha: float = 1.0
    #: Fewest tissue pixels for a per-tile stain estimate; with fewer, or when the estimate
    #: does not look like haematoxylin and eosin, the reference H&E vectors are used.
    macenko_min_pixels: int = 500

    def __post_init__(self) -> None:
        _require(isinstance(self.enabled, bool), "nuclei.enabled", self.enabled, "true or false")
        if self.representatives is not None:
            _require(isinstance(self.representatives, int) and not isinstance(self.representatives, bool)
                     and self.representatives >= 1, "nuclei.representatives", self.representatives,
                     "an integer >= 1 or unset")
        _require(_is_number(self.nucleus_radius_min_um) and 0.5 <= self.nucleus_radius_min_um <= 50,
                 "nuclei.nucleus_radius_min_um", self.nucleus_radius_min_um, "a radius in µm between 0.5 and 50")
        _require(_is_number(self.nucleus_radius_max_um)
                 and self.nucleus_radius_min_um <= self.nucleus_radius_max_um <= 100,
                 "nuclei.nucleus_radius_max_um", self.nucleus_radius_max_um,
                 f"a radius in µm between nuclei.nucleus_radius_min_um ({self.nucleus_radius_min_um}) and 100")
        _require(_is_number(self.min_area_um2) and self.min_area_um2 >= 0, "nuclei.min_area_um2",
                 self.min_area_um2, "an area in µm² >= 0")
        _require(_is_number(self.max_area_um2) and self.max_area_um2 > self.min_area_um2,
                 "nuclei.max_area_um2", self.max_area_um2,
                 f"an area in µm² larger than nuclei.min_area_um2 ({self.min_area_um2})")
        for name in ("smoothing_um", "closing_um", "opening_um", "median_um"):
            value = getattr(self, name)
            _require(_is_number(value) and 0 <= value <= 20, f"nuclei.{name}", value,
                     "a length in µm between 0 and 20")
        _require(_is_number(self.threshold_block_um) and (self.threshold_block_um == 0
                                                          or 4 <= self.threshold_block_um <= 10_000),
                 "nuclei.threshold_block_um", self.threshold_block_um, "0 or a length in µm between 4 and 10000")
        _require(_is_number(self.pale_interior_max_um2) and 0 <= self.pale_interior_max_um2 <= 10_000,
                 "nuclei.pale_interior_max_um2", self.pale_interior_max_um2, "an area in µm² between 0 and 10000")
        _require(_is_number(self.tissue_od) and 0 < self.tissue_od < 2, "nuclei.tissue_od", self.tissue_od,
                 "an optical density in (0, 2)")
        _require(_is_number(self.achromatic_range) and 0 <= self.achromatic_range <= 255,
                 "nuclei.achromatic_range", self.achromatic_range, "a colour range in [0, 255]")
        _require(_is_number(self.max_off_stain_deg) and 0 < self.max_off_stain_deg <= 90,
                 "nuclei.max_off_stain_deg", self.max_off_stain_deg, "an angle in degrees in (0, 90]")
        _require(_is_number(self.macenko_alpha) and 0 <= self.macenko_alpha < 50, "nuclei.macenko_alpha",
                 self.macenko_alpha, "a percentile in [0, 50)")
        _require(isinstance(self.macenko_min_pixels, int) and not isinstance(self.macenko_min_pixels, bool)
                 and self.macenko_min_pixels >= 10, "nuclei.macenko_min_pixels", self.macenko_min_pixels,
                 "an integer >= 10")


@dataclass(frozen=True)
class GlandConfig:
    """Unsupervised gland segmentation (:mod:`tumls_qp.cells.glands`).

    No training data and no shipped weights: every quantity is measured on the image
    itself, relative to its own nuclei. Sizes are in µm (or µm²); the values were chosen
    on the GlaS training images (see ``reports/glands.md``).
    """

    #: Segment glands in every representative patch (annotations of class "Gland" nested under
    #: their representative, per-tissue gland features). Off by default, not for its cost (about
    #: 0.03-0.08 s per representative) but because it was designed on colon (GlaS) and takes other
    #: epithelium (e.g. epidermis) for glands; see ``reports/glands.md``.
    enabled: bool = False
    #: Pixel size (µm/px) the method works at; every image is resampled to it (1.24 µm/px
    #: is 8x: nuclei stay a few pixels wide, a gland is tens of pixels).
    working_mpp: float = 1.24
    #: A pixel is tissue when its optical density averaged over R, G and B exceeds this ...
    tissue_od: float = 0.083
    #: ... times the image's median tissue optical density (over the pixels above ``tissue_od``)
    #: divided by this, bounded to 0.5-2x ``tissue_od``: a weaker stain lowers the threshold with the
    #: tissue, so that pale tissue (cytoplasm, goblet cells) stays tissue whatever the stain strength.
    #: 0.2 (the default) is the median of the GlaS training images; 0: the fixed ``tissue_od``.
    tissue_reference_od: float = 0.2
    #: The image's own (Macenko) stain vectors are used when each lies within this angle (degrees)
    #: of the reference H&E vectors, otherwise the reference vectors (the nuclei keep 30°). The
    #: switch changes the whole score, and a weaker eosin tilts the eosin estimate of half of the GlaS
    #: training images past 30°; 45 (the default) keeps their own vectors (``reports/glands.md``,
    #: stain-relative tissue and stain vectors).
    max_stain_deviation_deg: float = 45.0
    #: Standard deviation (µm) of the Gaussian that turns haematoxylin into a density of
    #: nuclei and basophilic cytoplasm.
    smoothing_um: float = 3.7
    #: Epithelium: smoothed haematoxylin, less the lymphocyte and texture penalties, above this
    #: fraction of the image's nuclear haematoxylin (its 99th percentile in tissue). Below zero, so
    #: that evenly coloured pale epithelium (goblet cells, mucin) counts, where nuclei are near
    #: (``min_nuclear_density``).
    threshold: float = -0.1
    #: Nuclear clumps smaller than this (µm²) count as lymphocytes or other single small
    #: round cells: epithelial nuclei are larger and crowd into larger clumps.
    lymphocyte_area_um2: float = 60.0
    #: Weight of the lymphocyte penalty: the share of nuclear pixels in small clumps
    #: (within ``lymphocyte_window_um``) times this is subtracted from the density.
    lymphocyte_weight: float = 0.25
    #: Standard deviation (µm) of the window in which the share of small clumps is measured.
    lymphocyte_window_um: float = 7.4
    #: Weight of the texture penalty: the local standard deviation of haematoxylin (relative to the
    #: nuclear level) times this is subtracted from the density. Nuclei scattered on pink stroma or in
    #: lamina propria make haematoxylin vary from pixel to pixel; epithelium and mucin are evenly coloured.
    texture_weight: float = 2.0
    #: Haematoxylin minus its Gaussian mean over this σ (µm) is the detail whose variation is measured.
    texture_detail_um: float = 3.7
    #: σ (µm) of the window over which the detail's variance is averaged.
    texture_window_um: float = 5.0
    #: Epithelium holds nuclei: only where the share of nuclear pixels within ``nuclear_density_um``
    #: exceeds this (pale stroma, alveolar walls and tinted background stay out).
    min_nuclear_density: float = 0.15
    #: σ (µm) of the window in which that share of nuclear pixels is measured.
    nuclear_density_um: float = 12.0
    #: ... and is not eosin alone: its haematoxylin share H / (H + E) (both smoothed over
    #: ``smoothing_um``) exceeds this, so that pink stroma beside a gland stays out.
    min_haematoxylin_share: float = 0.2
    #: Epithelium fragments smaller than this (µm²) are dropped before the interior is filled.
    min_epithelium_um2: float = 460.0
    #: Crypt interiors (goblet cells, mucin, lumen), found whole even where their ring of epithelium is
    #: broken: haematoxylin smoothed over ``crypt_smoothing_um`` below this fraction of the nuclear level.
    crypt_haematoxylin: float = 0.15
    #: σ (µm) of that smoothing.
    crypt_smoothing_um: float = 5.0
    #: Smallest and largest crypt interior (µm²).
    crypt_min_um2: float = 800.0
    crypt_max_um2: float = 30000.0
    #: A crypt interior is compact: its area over that of its convex hull is at least this.
    crypt_min_solidity: float = 0.8
    #: ... evenly coloured: its mean haematoxylin texture (as for ``texture_weight``) is below this ...
    crypt_max_texture: float = 0.08
    #: ... and lined by epithelium: at least this share of a 5 µm band around it is epithelium.
    crypt_min_lining: float = 0.2
    #: A kept crypt interior is grown by this (µm) into the tissue around it: its wall of epithelium.
    crypt_wall_um: float = 8.0
    #: A region that touches the image border is a cut lumen (and filled) when less than this
    #: share of its outline lies on the border and it is smaller than ``max_open_lumen_um2``.
    max_open_share: float = 0.5
    #: Largest region (µm²) touching the image border that can be filled as a cut lumen.
    max_open_lumen_um2: float = 15400.0
    #: An enclosed region is filled only when its mean haematoxylin is below this fraction of the
    #: nuclear level: lumens, mucin and secretions hold few nuclei, stroma caught between glands holds many.
    max_lumen_haematoxylin: float = 0.18
    #: Glands smaller than this (µm², a disk about 50 µm across) are dropped: stroma and
    #: lymphocyte clusters leave small dark specks, glands are larger.
    min_gland_um2: float = 3000.0

    def __post_init__(self) -> None:
        _require(isinstance(self.enabled, bool), "glands.enabled", self.enabled, "true or false")
        _require(_is_number(self.working_mpp) and 0.2 <= self.working_mpp <= 5, "glands.working_mpp",
                 self.working_mpp, "a pixel size in µm/px between 0.2 and 5")
        _require(_is_number(self.tissue_od) and 0 < self.tissue_od < 2, "glands.tissue_od", self.tissue_od,
                 "an optical density in (0, 2)")
        _require(_is_number(self.tissue_reference_od) and 0 <= self.tissue_reference_od < 2,
                 "glands.tissue_reference_od", self.tissue_reference_od, "an optical density in [0, 2) (0: off)")
        _require(_is_number(self.max_stain_deviation_deg) and 0 < self.max_stain_deviation_deg <= 90,
                 "glands.max_stain_deviation_deg", self.max_stain_deviation_deg, "an angle in (0, 90] degrees")
        for name in ("smoothing_um", "lymphocyte_window_um", "texture_detail_um", "texture_window_um",
                     "nuclear_density_um", "crypt_smoothing_um"):
            value = getattr(self, name)
            _require(_is_number(value) and 0.5 <= value <= 100, f"glands.{name}", value,
                     "a length in µm between 0.5 and 100")
        _require(_is_number(self.threshold) and -1 < self.threshold < 1, "glands.threshold", self.threshold,
                 "a fraction in (-1, 1)")
        _require(_is_number(self.lymphocyte_area_um2) and self.lymphocyte_area_um2 >= 0,
                 "glands.lymphocyte_area_um2", self.lymphocyte_area_um2, "an area in µm² >= 0")
        _require(_is_number(self.lymphocyte_weight) and 0 <= self.lymphocyte_weight <= 1,
                 "glands.lymphocyte_weight", self.lymphocyte_weight, "a weight in [0, 1]")
        _require(_is_number(self.texture_weight) and 0 <= self.texture_weight <= 10,
                 "glands.texture_weight", self.texture_weight, "a weight in [0, 10]")
        for name in ("min_nuclear_density", "min_haematoxylin_share", "crypt_min_solidity", "crypt_min_lining"):
            value = getattr(self, name)
            _require(_is_number(value) and 0 <= value <= 1, f"glands.{name}", value, "a fraction in [0, 1]")
        for name in ("crypt_haematoxylin", "crypt_max_texture"):
            value = getattr(self, name)
            _require(_is_number(value) and value > 0, f"glands.{name}", value, "a fraction > 0")
        _require(_is_number(self.crypt_wall_um) and 0 <= self.crypt_wall_um <= 100, "glands.crypt_wall_um",
                 self.crypt_wall_um, "a length in µm between 0 and 100")
        _require(_is_number(self.crypt_max_um2) and _is_number(self.crypt_min_um2)
                 and self.crypt_max_um2 >= self.crypt_min_um2, "glands.crypt_max_um2", self.crypt_max_um2,
                 "an area in µm² >= glands.crypt_min_um2")
        for name in ("min_epithelium_um2", "max_open_lumen_um2", "min_gland_um2", "crypt_min_um2"):
            value = getattr(self, name)
            _require(_is_number(value) and value >= 0, f"glands.{name}", value, "an area in µm² >= 0")
        _require(_is_number(self.max_open_share) and 0 <= self.max_open_share <= 1, "glands.max_open_share",
                 self.max_open_share, "a fraction in [0, 1]")
        _require(_is_number(self.max_lumen_haematoxylin) and self.max_lumen_haematoxylin > 0,
                 "glands.max_lumen_haematoxylin", self.max_lumen_haematoxylin, "a fraction > 0")


@dataclass(frozen=True)
class OutputConfig:
    """What the run folder holds."""

    #: Write ``tissue.geojson.gz`` instead of ``tissue.geojson``.
    gzip: bool = False
    #: Add one QuPath ``tile`` object per tissue tile (for the uncertainty measurement map).
    tile_objects: bool = True
    #: Render ``report.pdf`` (the per-case PDF of cross-level insights) into every run folder,
    #: and ``cohort-report.pdf`` beside the run folders of a cohort. ``tumls-qp report`` renders
    #: them again later from the run folders alone.
    report: bool = True
    #: Colour every tissue tile by its embedding reduced to 3-D (the SIC paper's feature-space view):
    #: ``embedding_colours.geojson`` (a QuPath tile layer), ``embedding_colours.npz`` and a figure in
    #: the report. ``auto``: UMAP when umap-learn is installed, PCA otherwise; ``umap``; ``pca``;
    #: ``none`` writes nothing.
    embedding_colours: str = "auto"

    def __post_init__(self) -> None:
        _require(isinstance(self.report, bool), "output.report", self.report, "true or false")
        _require(self.embedding_colours in ("auto", "umap", "pca", "none"), "output.embedding_colours",
                 self.embedding_colours, "one of auto, umap, pca, none")


@dataclass(frozen=True)
class PipelineConfig:
    """Everything that determines a run's result."""

    #: Seed of every random choice (data split, weight init, subsampling, k-means).
    seed: int = 0
    slide: SlideConfig = field(default_factory=SlideConfig)
    tiles: TileConfig = field(default_factory=TileConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    clusters: ClusterConfig = field(default_factory=ClusterConfig)
    regions: RegionConfig = field(default_factory=RegionConfig)
    representatives: RepresentativeConfig = field(default_factory=RepresentativeConfig)
    nuclei: NucleiConfig = field(default_factory=NucleiConfig)
    glands: GlandConfig = field(default_factory=GlandConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def __post_init__(self) -> None:
        _require(isinstance(self.seed, int) and 0 <= self.seed < 2**32, "seed", self.seed,
                 "an integer in [0, 2**32)")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """Check a TOML value against a field's annotation; ints are accepted for floats."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(name, value, option)
            except ConfigError:
                pass
        raise ConfigError(f"{name} must be {' or '.join(_type_name(o) for o in options)}; got {value!r}")
    if origin is tuple:
        args = typing.get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"{name} must be a list; got {value!r}")
            return tuple(_coerce(f"{name}[{i}]", v, args[0]) for i, v in enumerate(value))
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{name} must be a list of {len(args)} values; got {value!r}")
        return tuple(_coerce(f"{name}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false; got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer; got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number; got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string; got {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {annotation!r}")


def _type_name(annotation: Any) -> str:
    names = {type(None): "unset", float: "a number", int: "an integer", str: "a string", bool: "true or false"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} must be a table; got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"[{prefix}]" if prefix else "the top level"
        raise ConfigError(f"unknown option(s) {', '.join(unknown)} in {where}; valid: {', '.join(sorted(names))}")
    kwargs = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else key
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, name)
        else:
            kwargs[key] = _coerce(name, value, hint)
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> PipelineConfig:
    """Build a :class:`PipelineConfig` from nested dicts (as TOML gives them); missing keys take defaults."""
    return _build(PipelineConfig, data, "")


def config_to_dict(config: Any) -> dict[str, Any]:
    """Nested dict of a config, with unset (None) options left out, as TOML needs."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = config_to_dict(value)
        elif isinstance(value, tuple):
            out[f.name] = list(value)
        elif value is not None:
            out[f.name] = value
    return out


def dump_config(config: PipelineConfig) -> str:
    """TOML text of a config; ``load_config`` of that text gives the same config back."""
    import tomli_w

    return tomli_w.dumps(config_to_dict(config))


def load_config(path: str | Path) -> PipelineConfig:
    """Read a TOML config file; options it leaves out take their defaults."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {str(path)!r}: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"the config file {str(path)!r} is not valid TOML: {exc}") from exc
    return config_from_dict(data)


def replace_in(config: PipelineConfig, **changes: Any) -> PipelineConfig:
    """Copy of ``config`` with dotted options changed, e.g. ``replace_in(c, **{"tiles.tile_um": 64.0})``.

    ``None`` values are ignored, so CLI flags that were not given change nothing.
    """
    data = config_to_dict(config)
    for dotted, value in changes.items():
        if value is None:
            continue
        *sections, key = dotted.split(".")
        node = data
        for section in sections:
            node = node.setdefault(section, {})
        node[key] = list(value) if isinstance(value, tuple) else value
    return config_from_dict(data)
