"""Tissue regions that follow the tissue below the tile size: tile assignments + the tissue-level image -> regions.

A tile is one embedding and one tissue, so a map made of whole tiles has staircase borders
and cannot say where inside a tile one tissue ends and the next begins. The image at the
tissue level (``tile_px`` pixels per tile side) can: this module places the borders on it.

Methods (``regions.method``)
----------------------------
``blocks``
    Each tissue region is the union of its tiles (TUMLS as published). Also the fallback
    when refinement is impossible (see *Fallback*).
``felzenszwalb``
    The multi-scale graph-based segmentation of the CDAC study (Felzenszwalb & Huttenlocher,
    IJCV 2004, at several scales), fused with the tiles' soft assignments:

    1. **Segments at several scales.** The tissue-level image, reduced to ``WORK_PX`` (8)
       pixels per tile side when larger (a quarter of a tile is then 2 px), is segmented once
       per scale in ``regions.scales``. A scale is given as the colour difference (RGB, 0-255)
       that a segment of one tile's area still merges across, so the same setting means the
       same at every ``tile_px`` (skimage's ``scale`` is that value times the tile's area in
       pixels). The finest scale places the borders; the coarser ones only give the finer
       segments their prior and run on the image reduced by 2 more (4x fewer pixels). Segments
       are at least ``min_segment_tiles`` tile areas. Each segment is cut to the region domain
       (below). The answer is given back at the resolution of the image passed in.
    2. **Evidence.** Each tile brings its soft assignment p (a posterior over the k tissues;
       for k-means the two-way posterior of :func:`tumls_qp.tissue.clusters.distance_posterior`).
       A tile that straddles two tissues has p near (½, ½); a tile inside one tissue leans
       clearly to it.
    3. **Fusion: the tile is the mixture of the segments it overlaps.** At each scale, every
       segment s gets a soft label q_s on the simplex that explains the tiles best:

           minimise  Σ_t ‖p_t − Σ_s a_ts q_s‖²  +  λ Σ_s m_s ‖q_s − π_s‖²

       with a_ts the fraction of tile t's domain pixels that lie in s, m_s the area of s in
       tiles, π_s the prior and λ = ``regions.prior_weight``. A straddling tile is then
       explained as half one tissue and half the other, split where the image changes, rather
       than given wholly to one of them.

       The prior π_s has two equal parts. (a) The study's hierarchy: the answer of the coarser
       segment that s overlaps most (top-down, coarse to fine). (b) The tiles' posteriors
       interpolated bilinearly between tile centres and averaged over s: where colour does not
       mark the border (two tissues that differ in architecture, not stain), the border falls
       where the evidence of the neighbouring tiles changes, instead of following colour blobs
       that straddle it. At the coarsest scale (b) alone is the prior. Part (b) was added after
       colour-only priors made the colon mosaic of ``reports/regions.md`` worse than whole
       tiles. A segment of one tile's area keeps what its tile says against its surroundings
       when λ is small (on the focus test of ``tests/test_regions.py`` over 6 noise draws, 0.5
       kept both foci whole every time, 1 lost a quarter of the one-tile focus once, 2 lost
       the one-tile focus every time); smaller segments with little evidence of their own follow their prior. The
       problem is convex; it is solved by projected gradient descent with a per-segment
       (Jacobi) step.
    4. **Labels.** Each pixel takes the tissue of largest q of its segment at the finest
       scale. Connected regions smaller than ``min_region_tiles`` tile areas join the
       neighbouring tissue they share most border with.

    The study fuses its scales with template matches and a Bayesian posterior (two classes);
    here the "templates" are the tile assignments of the clustering, for k tissues, and the
    least-squares unmixing replaces the per-pixel posterior so that a tile's evidence is
    shared between the segments it covers instead of being copied to each of them.

Region domain
-------------
The pixels of the kept tiles; with a tissue mask, only the tissue pixels among them, so a
region's outline follows the tissue and glass inside a tile is left out. ``-1`` marks pixels
outside every region.

Fallback
--------
Refinement falls back to ``blocks`` with a warning (``RegionMap.warnings``, written to the
manifest) when it cannot say anything below the tile: fewer than 2 tiles, or no tissue
pixel in the kept tiles. A tissue whose every tile is absorbed by its neighbours (e.g. a
cluster made only of tiles that straddle two other tissues) keeps its tiles in the tile
layer and is named in a warning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy import sparse

from ..config import RegionConfig
from ..errors import InvalidInputError

__all__ = ["RegionMap", "refine_regions", "block_regions", "region_geometries", "project_to_simplex"]

log = logging.getLogger(__name__)

#: Pixels per tile side at which regions are computed (the tissue-level image is reduced to it when
#: larger): a quarter of a tile is 2 px, and the segmentation runs on 4x fewer pixels than at 16 px.
WORK_PX = 8
#: Projected-gradient iterations per scale; the per-segment step converges in far fewer on real slides.
_ITERATIONS = 300
#: Stop a scale's iterations when no soft label moves by more than this.
_TOLERANCE = 1e-5


@dataclass(frozen=True)
class RegionMap:
    """Tissue regions at the tissue level.

    Attributes
    ----------
    labels : (H, W) int32 ndarray
        Tissue of every tissue-level pixel (0-based, as the tile labels), -1 outside every region.
        Pixel (r, c) covers level-0 box ``(c, r, 1, 1) * downsample``.
    downsample : float
        Level-0 pixels per tissue-level pixel (``tile_size / tile_px``).
    method : str
        The method that made ``labels``: ``"felzenszwalb"`` or ``"blocks"`` (asked for, or the fallback).
    warnings : tuple of str
        Why refinement fell back to blocks, or what it changed that a reader should know.
    segments : tuple of int
        Number of segments at each scale, finest first (empty for blocks).
    changed_fraction : float
        Share of the tiles' pixels whose tissue differs from whole tiles (glass left out included).
    """

    labels: np.ndarray
    downsample: float
    method: str
    warnings: tuple[str, ...] = ()
    segments: tuple[int, ...] = ()
    changed_fraction: float = 0.0

    def areas_px(self, k: int) -> np.ndarray:
        """(k,) pixels per tissue."""
        return np.bincount(self.labels[self.labels >= 0].ravel(), minlength=k)[:k]


def _check(image: np.ndarray, grid_shape: tuple[int, int], tile_px: int, tiles: np.ndarray, labels: np.ndarray,
           posterior: np.ndarray | None, tissue: np.ndarray | None) -> tuple[np.ndarray, ...]:
    cols, rows = (int(v) for v in grid_shape)
    if isinstance(tile_px, bool) or not isinstance(tile_px, (int, np.integer)) or tile_px < 1:
        raise InvalidInputError(f"tile_px must be an integer >= 1; got {tile_px!r}")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or image.shape[:2] != (rows * tile_px,
                                                                                                 cols * tile_px):
        raise InvalidInputError(f"image must be the ({rows * tile_px}, {cols * tile_px}, 3) uint8 tissue-level "
                                f"image of a {cols} x {rows} grid of {tile_px} px tiles; got shape {image.shape} "
                                f"dtype {image.dtype}")
    tiles = np.asarray(tiles, dtype=np.int64)
    labels = np.asarray(labels)
    if tiles.ndim != 1 or (len(tiles) and (tiles.min() < 0 or tiles.max() >= rows * cols)) \
            or len(np.unique(tiles)) != len(tiles):
        raise InvalidInputError(f"tiles must be distinct row-major indices into the {cols} x {rows} grid; got "
                                f"{len(tiles)} values in [{tiles.min() if len(tiles) else '-'}, "
                                f"{tiles.max() if len(tiles) else '-'}]")
    if labels.shape != tiles.shape or not np.issubdtype(labels.dtype, np.integer) or (len(labels) and labels.min() < 0):
        raise InvalidInputError(f"labels must give one tissue (integer >= 0) per tile; got shape {labels.shape} "
                                f"for {len(tiles)} tiles")
    if posterior is not None:
        posterior = np.asarray(posterior, dtype=np.float64)
        k = int(labels.max()) + 1 if len(labels) else 1
        if posterior.ndim != 2 or posterior.shape[0] != len(tiles) or posterior.shape[1] < k \
                or not np.isfinite(posterior).all() or (posterior < 0).any():
            raise InvalidInputError(f"posterior must be an (n_tiles, k) array of non-negative numbers with "
                                    f"k >= {k}; got shape {posterior.shape}")
    if tissue is not None:
        tissue = np.asarray(tissue)
        if tissue.shape != image.shape[:2] or tissue.dtype != bool:
            raise InvalidInputError(f"tissue must be a bool mask of the image's shape {image.shape[:2]}; got "
                                    f"shape {tissue.shape} dtype {tissue.dtype}")
    return image, tiles, labels.astype(np.int64), posterior, tissue


def block_regions(grid_shape: tuple[int, int], tile_px: int, tiles: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each tile's pixels take its tile's tissue (TUMLS's map).

    Parameters
    ----------
    grid_shape : (int, int)
        (columns, rows) of the tile grid.
    tile_px : int
        Tile side at the tissue level, px.
    tiles : (n,) int ndarray
        Row-major grid indices of the kept tiles.
    labels : (n,) int ndarray
        Tissue of each tile.

    Returns
    -------
    (rows * tile_px, columns * tile_px) int32 ndarray
        -1 outside the kept tiles.
    """
    cols, rows = grid_shape
    grid = np.full(rows * cols, -1, dtype=np.int32)
    grid[np.asarray(tiles, dtype=np.int64)] = labels
    return np.kron(grid.reshape(rows, cols), np.ones((tile_px, tile_px), dtype=np.int32))


def project_to_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection of each row of ``v`` (n, k) onto the probability simplex (Held et al. / Duchi et al.)."""
    n, k = v.shape
    u = -np.sort(-v, axis=1)
    css = np.cumsum(u, axis=1) - 1.0
    index = np.arange(1, k + 1)
    positive = u - css / index > 0
    rho = k - 1 - np.argmax(positive[:, ::-1], axis=1)
    theta = css[np.arange(n), rho] / (rho + 1)
    return np.maximum(v - theta[:, None], 0.0)


def _unmix(a: sparse.csr_matrix, evidence: np.ndarray, prior: np.ndarray, mass: np.ndarray,
           weight: float) -> np.ndarray:
    """Soft segment labels q minimising Σ_t ‖p_t − (a q)_t‖² + weight Σ_s m_s ‖q_s − π_s‖², rows on the simplex."""
    at = a.T.tocsr()
    # Gershgorin bound of the Hessian's row s: Σ_t a_ts Σ_s' a_ts' + weight m_s (rows of a sum to 1).
    bound = np.asarray(at @ np.asarray(a.sum(axis=1)).ravel()).ravel() + weight * mass
    step = 1.0 / np.maximum(bound, 1e-12)
    q = prior.copy()
    for _ in range(_ITERATIONS):
        gradient = at @ (a @ q - evidence) + (weight * mass)[:, None] * (q - prior)
        new = project_to_simplex(q - step[:, None] * gradient)
        moved = float(np.abs(new - q).max()) if len(q) else 0.0
        q = new
        if moved < _TOLERANCE:
            break
    return q


def _interpolate(posterior: np.ndarray, tiles: np.ndarray, grid_shape: tuple[int, int], tile_px: int) -> np.ndarray:
    """(H, W, k) tile posteriors interpolated bilinearly between tile centres (tiles without one left out)."""
    cols, rows = grid_shape
    k = posterior.shape[1]
    values = np.zeros((rows * cols, k))
    weight = np.zeros(rows * cols)
    values[tiles] = posterior
    weight[tiles] = 1.0
    values, weight = values.reshape(rows, cols, k), weight.reshape(rows, cols)
    centres_y = (np.arange(rows * tile_px) + 0.5) / tile_px - 0.5
    centres_x = (np.arange(cols * tile_px) + 0.5) / tile_px - 0.5
    y, x = np.meshgrid(centres_y, centres_x, indexing="ij")
    w = ndi.map_coordinates(weight, [y, x], order=1, mode="nearest")
    out = np.stack([ndi.map_coordinates(values[..., j] * weight, [y, x], order=1, mode="nearest")
                    for j in range(k)], axis=-1)
    return out / np.maximum(w, 1e-12)[..., None]


def _reduce(image: np.ndarray, factor: int) -> np.ndarray:
    """Block mean of an (H, W[, C]) image over factor x factor pixels."""
    h, w = image.shape[0] // factor, image.shape[1] // factor
    blocks = image[:h * factor, :w * factor].reshape(h, factor, w, factor, *image.shape[2:])
    return blocks.mean(axis=(1, 3), dtype=np.float32)


def _segment(image: np.ndarray, tile_px: int, cfg: RegionConfig) -> list[np.ndarray]:
    """Felzenszwalb segmentations, finest first: (H, W) int64 segment ids per scale.

    The finest scale, which places the borders, runs on the image as given; the coarser ones, which only
    give the finer segments their prior, on the image reduced by 2 (4x fewer pixels), their ids enlarged back.
    """
    from skimage.segmentation import felzenszwalb

    out = []
    for i, s in enumerate(sorted(cfg.scales)):
        factor = 2 if i > 0 and tile_px % 2 == 0 and tile_px >= 4 else 1
        px = tile_px // factor
        small = _reduce(image, factor).round().astype(np.uint8) if factor > 1 else image
        seg = felzenszwalb(small, scale=float(s) * px * px, sigma=cfg.sigma_tiles * px,
                           min_size=max(1, int(round(cfg.min_segment_tiles * px * px)))).astype(np.int64)
        out.append(np.repeat(np.repeat(seg, factor, axis=0), factor, axis=1) if factor > 1 else seg)
    return out


def _merge_small(labels: np.ndarray, min_px: int) -> np.ndarray:
    """Give each connected region smaller than ``min_px`` the neighbouring tissue it shares most border with."""
    if min_px <= 1:
        return labels
    out = labels.copy()
    structure = np.ones((3, 3), bool)
    for _ in range(3):  # a region that joins a small neighbour may itself be small: repeat a few times
        changed = False
        for tissue in np.unique(out[out >= 0]):
            parts, n = ndi.label(out == tissue, structure=structure)
            if n == 0:
                continue
            sizes = np.bincount(parts.ravel())
            boxes = ndi.find_objects(parts)
            for part in np.flatnonzero(sizes < min_px):
                if part == 0:
                    continue
                box = boxes[part - 1]
                box = tuple(slice(max(0, s.start - 1), s.stop + 1) for s in box)
                own = parts[box] == part
                ring = ndi.binary_dilation(own, structure=structure) & ~own
                neighbours = out[box][ring]
                neighbours = neighbours[(neighbours >= 0) & (neighbours != tissue)]
                if len(neighbours):
                    out[box][own] = np.bincount(neighbours).argmax()
                    changed = True
        if not changed:
            break
    return out


def refine_regions(
    image: np.ndarray,
    grid_shape: tuple[int, int],
    tile_px: int,
    tiles: np.ndarray,
    labels: np.ndarray,
    posterior: np.ndarray | None,
    cfg: RegionConfig,
    *,
    tissue: np.ndarray | None = None,
    downsample: float = 1.0,
) -> RegionMap:
    """Tissue regions whose borders follow the tissue-level image (see the module docstring).

    Parameters
    ----------
    image : (rows * tile_px, columns * tile_px, 3) uint8 ndarray
        The slide at the tissue level (the tiles' pixels in place).
    grid_shape : (int, int)
        (columns, rows) of the tile grid.
    tile_px : int
        Tile side at the tissue level, px.
    tiles : (n,) int ndarray
        Row-major grid indices of the tiles that have a tissue.
    labels : (n,) int ndarray
        Tissue of each tile, 0-based.
    posterior : (n, k) float ndarray or None
        Soft assignment of each tile (rows are normalised here). None: one-hot ``labels``.
    cfg : RegionConfig
    tissue : (rows * tile_px, columns * tile_px) bool ndarray, optional
        Tissue mask: regions are restricted to it.
    downsample : float
        Level-0 px per tissue-level pixel, kept on the result for :func:`region_geometries`.

    Returns
    -------
    RegionMap

    Raises
    ------
    InvalidInputError
        An array of the wrong shape or type (named in the message).
    """
    image, tiles, labels, posterior, tissue = _check(image, grid_shape, tile_px, tiles, labels, posterior, tissue)
    cols, rows = (int(v) for v in grid_shape)
    blocks = block_regions((cols, rows), tile_px, tiles, labels)
    full_domain = blocks >= 0
    if tissue is not None:
        full_domain &= tissue
    k = int(labels.max()) + 1 if len(labels) else 0

    def fallback(reason: str) -> RegionMap:
        log.warning("regions: %s; the tissue map keeps whole tiles", reason)
        return RegionMap(labels=blocks, downsample=float(downsample), method="blocks",
                         warnings=(f"regions fall back to whole tiles: {reason}",))

    if cfg.method == "blocks":
        return RegionMap(labels=blocks, downsample=float(downsample), method="blocks")
    # The work is done at WORK_PX pixels per tile; the answer is given back at the image's resolution.
    factor = tile_px // WORK_PX if tile_px > WORK_PX and tile_px % WORK_PX == 0 else 1
    if factor > 1:
        image = _reduce(image, factor).round().astype(np.uint8)
        tissue = _reduce(tissue, factor) >= 0.5 if tissue is not None else None
        tile_px = WORK_PX
    domain = block_regions((cols, rows), tile_px, tiles, labels) >= 0
    if tissue is not None:
        domain &= tissue
    if len(tiles) < 2:
        return fallback(f"{len(tiles)} tissue tile(s), at least 2 are needed to refine borders")
    if not domain.any():
        return fallback("the tissue mask holds no pixel of the tissue tiles")

    if posterior is None:
        posterior = np.eye(k)[labels]
    posterior = posterior[:, :k] if posterior.shape[1] > k else posterior
    total = posterior.sum(axis=1, keepdims=True)
    posterior = np.where(total > 0, posterior / np.where(total > 0, total, 1), np.eye(k)[labels])

    # Tile of every domain pixel, as an index into ``tiles``.
    tile_of_grid = np.full(rows * cols, -1, dtype=np.int64)
    tile_of_grid[tiles] = np.arange(len(tiles))
    rr, cc = np.nonzero(domain)
    pixel_tile = tile_of_grid[(rr // tile_px) * cols + cc // tile_px]
    tile_px_count = np.bincount(pixel_tile, minlength=len(tiles)).astype(np.float64)
    has_pixels = tile_px_count > 0
    area_unit = float(tile_px * tile_px)

    levels = _segment(image, tile_px, cfg)
    segment_ids = []
    for seg in levels:
        # Renumber each scale's segments to 0..n-1 over the domain (a segment cut by the domain stays one id).
        values = seg[rr, cc]
        present = np.zeros(int(seg.max()) + 1, dtype=np.int64)
        present[values] = 1
        segment_ids.append((np.cumsum(present) - 1)[values])

    evidence = posterior[has_pixels]
    tile_rows = np.cumsum(has_pixels) - 1
    smooth = _interpolate(posterior, tiles, (cols, rows), tile_px)[rr, cc]
    q_parent = None
    parent_ids = None
    answers = []
    for ids in reversed(segment_ids):  # coarsest first
        n_seg = int(ids.max()) + 1
        counts = sparse.coo_matrix((np.ones(len(ids)), (tile_rows[pixel_tile], ids)),
                                   shape=(int(has_pixels.sum()), n_seg)).tocsr()
        a = sparse.diags(1.0 / tile_px_count[has_pixels]) @ counts
        mass = np.asarray(counts.sum(axis=0)).ravel() / area_unit
        # The prior: the tiles' posteriors interpolated between tile centres and averaged over the segment,
        # and (below the coarsest scale) the answer of the parent segment, in equal parts.
        count = np.bincount(ids, minlength=n_seg).astype(np.float64)
        prior = np.stack([np.bincount(ids, smooth[:, j], minlength=n_seg) for j in range(k)], axis=1) / count[:, None]
        if q_parent is not None:
            overlap = sparse.coo_matrix((np.ones(len(ids)), (ids, parent_ids)),
                                        shape=(n_seg, int(parent_ids.max()) + 1)).tocsr()
            parent = np.asarray(overlap.argmax(axis=1)).ravel()
            prior = (prior + q_parent[parent]) / 2
        q_parent = _unmix(a.tocsr(), evidence, prior, mass, cfg.prior_weight)
        parent_ids = ids
        answers.append(n_seg)

    out = np.full(domain.shape, -1, dtype=np.int32)
    out[rr, cc] = q_parent.argmax(axis=1)[segment_ids[0]]
    out = _merge_small(out, int(round(cfg.min_region_tiles * area_unit)))

    warnings = []
    areas = np.bincount(out[out >= 0].ravel(), minlength=k)
    tile_counts = np.bincount(labels, minlength=k)
    lost = [t for t in range(k) if tile_counts[t] > 0 and areas[t] == 0]
    if lost:
        warnings.append(
            "tissue(s) " + ", ".join(str(t + 1) for t in lost) + " have tiles but no region after border "
            "refinement: their tiles straddle borders between other tissues (they stay in the tile layer)")
    if factor > 1:
        out = np.repeat(np.repeat(out, factor, axis=0), factor, axis=1)
        gaps = full_domain & (out < 0)  # tissue pixels of mask-edge blocks: the nearest region's tissue
        if gaps.any() and (out >= 0).any():
            nearest = ndi.distance_transform_edt(out < 0, return_distances=False, return_indices=True)
            out[gaps] = out[nearest[0][gaps], nearest[1][gaps]]
    out[~full_domain] = -1
    changed = float((out != blocks)[blocks >= 0].mean())
    return RegionMap(labels=out, downsample=float(downsample), method="felzenszwalb", warnings=tuple(warnings),
                     segments=tuple(reversed(answers)), changed_fraction=changed)


def region_geometries(labels: np.ndarray, downsample: float = 1.0,
                      offset: tuple[float, float] = (0.0, 0.0)) -> dict[int, object]:
    """The outline of each tissue of a label image, as shapely geometries in level-0 px.

    Parameters
    ----------
    labels : (H, W) int ndarray
        Tissue per pixel, -1 for none (``RegionMap.labels``).
    downsample : float
        Level-0 px per pixel.
    offset : (float, float)
        Level-0 (x, y) of the image's top-left corner.

    Returns
    -------
    dict of int to shapely Polygon or MultiPolygon
        Exactly the union of each tissue's pixel squares (holes included), scaled to level 0.
    """
    import shapely

    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise InvalidInputError(f"labels must be a 2-D integer array; got shape {labels.shape} dtype {labels.dtype}")
    out = {}
    for tissue in np.unique(labels[labels >= 0]):
        mask = np.pad(labels == tissue, ((0, 0), (1, 1)))
        step = np.diff(mask.astype(np.int8), axis=1)
        r0, c0 = np.nonzero(step == 1)
        _, c1 = np.nonzero(step == -1)  # same row order as the starts: runs alternate start/end along a row
        boxes = shapely.box(c0 * downsample + offset[0], r0 * downsample + offset[1],
                            c1 * downsample + offset[0], (r0 + 1) * downsample + offset[1])
        out[int(tissue)] = shapely.union_all(boxes)
    return out
