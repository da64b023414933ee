"""Faithfulness of saliency maps: deletion, insertion and ROAD, next to two baselines.

A map is faithful when the pixels it ranks highest are the ones the model's
probability for the explained class depends on. Three measurements, each
scored for the method's map and for two baseline maps of the same images (a
Gaussian at the image centre and one at a seeded random pixel, the baselines
of :mod:`explain.pointing`; smooth blobs like the method's maps, so a
difference is about *where* the map points, not about its texture):

* Deletion (Petsiuk et al., RISE, 2018): pixels are replaced by a blurred
  copy of the image in decreasing order of the map; the class probability is
  recorded at :data:`FRACTIONS` of the pixels removed. A lower area under the
  curve is better: the probability falls fast when the right pixels go.
* Insertion: the reverse, from the blurred image the original pixels come
  back in decreasing order of the map. A higher area is better.
* ROAD (Rong et al., "A Consistent and Efficient Evaluation Strategy for
  Attribution Methods", ICML 2022): a fraction of the pixels is removed most
  relevant first (MoRF, lower area better) or least relevant first (LeRF,
  higher area better) and filled by noisy linear imputation, so the filled
  region carries no trace of the mask's shape for the model to read.

Areas are trapezoid-rule integrals divided by the span of the fractions: the
curve's mean height, so a constant curve has the constant as its area.

Ties in a map (flat regions, a constant map) are broken by a seeded random
key per pixel, never by position: a flat map then removes pixels in a random
order, as a random map would, instead of scanning rows from the top-left.
"""

import dataclasses
from collections.abc import Callable

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse import linalg

from contracts.model import MAIN_OUTPUT
from explain import layers, pointing

# 0, 1/16, ..., 1: 17 forward passes per curve resolve the early drop that
# decides most of the area without making the metric dominate a run.
FRACTIONS = tuple(i / 16 for i in range(17))

# The ROAD paper's removal percentages, every other one (10%, 30%, ..., 90%).
ROAD_FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)

# Deleted pixels become a Gaussian blur of the image of this standard
# deviation, as a fraction of the image side (6.4 px at 64 px). Black pixels
# would add sharp edges the model never saw in training and that it may
# react to; a blur this wide removes object-scale shape and texture but keeps
# the colours and layout, so the perturbed image stays closer to the data.
# Deletion and insertion share it, so both curves join the same two images.
BLUR_SIGMA = 0.1

# Standard deviation of ROAD's imputation noise in raw pixel units: the
# reference implementation adds N(0, 0.01) to images scaled to [0, 1] (its
# CIFAR-10 runs impute before normalising), i.e. 1% of the pixel range.
ROAD_NOISE = 0.01 * 255.0

# ROAD's imputation: each removed pixel is the weighted mean of its 8
# neighbours, direct ones weighing twice the diagonal ones.
NEIGHBOURS = (
    ((-1, 0), 1 / 6),
    ((1, 0), 1 / 6),
    ((0, -1), 1 / 6),
    ((0, 1), 1 / 6),
    ((-1, -1), 1 / 12),
    ((-1, 1), 1 / 12),
    ((1, -1), 1 / 12),
    ((1, 1), 1 / 12),
)

# The maps scored per image, in the order they are stacked for the model.
_MAPS = ("method", "random", "center")
# Metric -> whether a higher area is better.
_HIGHER_IS_BETTER = {"deletion": False, "insertion": True, "road_morf": False, "road_lerf": True}


def scored_metrics(summary):
    """Returns ``[(metric, entry)]`` of the metrics a :meth:`Faithfulness.summary` scored.

    Metrics not scored (ROAD when it was off, every metric before any image)
    are left out; ``summary`` may be ``None`` (faithfulness was off).
    """
    return [(metric, summary[metric]) for metric in _HIGHER_IS_BETTER if summary and summary.get(metric)]


def area(curve, fractions):
    """Returns the trapezoid area under ``curve`` divided by the span of ``fractions``.

    Args:
        curve: Values ``[..., F]`` at the ``F`` fractions.
        fractions: ``F`` increasing fractions (at least two).

    Returns:
        The curve's mean height over the fractions' range (``[...]``).
    """
    fractions = np.asarray(fractions, dtype=np.float64)
    if fractions.ndim != 1 or len(fractions) < 2 or np.any(np.diff(fractions) <= 0):
        raise ValueError(f"fractions must be at least two increasing values, got {fractions.tolist()}")
    curve = np.asarray(curve, dtype=np.float64)
    return np.trapezoid(curve, fractions, axis=-1) / (fractions[-1] - fractions[0])


def removal_ranks(maps, rng):
    """Returns int ``[B, H, W]``: each pixel's position in its map's removal order.

    Rank 0 is the most relevant pixel (highest value). Ties are ordered by a
    random key drawn from ``rng`` (a numpy Generator), so equal values go in
    a random, reproducible order rather than in raster order.
    """
    maps = np.asarray(maps, dtype=np.float64)
    count = len(maps)
    flat = maps.reshape(count, -1)
    tiebreak = rng.random(flat.shape)
    order = np.lexsort((tiebreak, -flat), axis=-1)
    return np.argsort(order, axis=-1).reshape(maps.shape)


def blur(images, sigma=BLUR_SIGMA):
    """Returns float32 ``[B, H, W, C]``: each image blurred by a Gaussian of ``sigma`` times its side."""
    images = np.asarray(images, dtype=np.float32)
    pixels = sigma * max(images.shape[1:3])
    return ndimage.gaussian_filter(images, sigma=(0, pixels, pixels, 0), mode="nearest")


def impute(image, removed, noise=0.0, rng=None):
    """Fills removed pixels by ROAD's noisy linear imputation.

    Each removed pixel is set to the weighted mean of its in-image neighbours
    (:data:`NEIGHBOURS`, renormalised at the border), known pixels fixed: one
    sparse linear system for the whole image, solved for all channels at
    once. Gaussian noise of standard deviation ``noise`` is then added to the
    filled pixels, which are clipped to ``[0, 255]``.

    Args:
        image: ``[H, W, C]`` raw pixels.
        removed: bool ``[H, W]``, true where the pixel is to be filled; at
            least one pixel must stay known.
        noise: Noise standard deviation in pixel units (0: none).
        rng: numpy Generator for the noise (needed when ``noise > 0``).

    Returns:
        float32 ``[H, W, C]``; known pixels are returned unchanged.
    """
    image = np.asarray(image, dtype=np.float64)
    removed = np.asarray(removed, dtype=bool)
    height, width, channels = image.shape
    if removed.shape != (height, width):
        raise ValueError(f"removed must have shape {(height, width)}, got {removed.shape}")
    unknown = np.flatnonzero(removed)
    count = len(unknown)
    if count == height * width:
        raise ValueError("impute needs at least one known pixel, got a mask removing all of them")
    filled = image.reshape(-1, channels).copy()
    if count == 0:
        return filled.reshape(image.shape).astype(np.float32)
    variable = np.full(height * width, -1)
    variable[unknown] = np.arange(count)
    ys, xs = np.divmod(unknown, width)
    diagonal = np.zeros(count)
    rhs = np.zeros((count, channels))
    rows, cols, values = [], [], []
    for (dy, dx), weight in NEIGHBOURS:
        ny, nx = ys + dy, xs + dx
        inside = np.flatnonzero((ny >= 0) & (ny < height) & (nx >= 0) & (nx < width))
        neighbour = ny[inside] * width + nx[inside]
        diagonal[inside] += weight
        known = variable[neighbour] < 0
        # One offset never names an equation twice, so += on fancy indices is safe.
        rhs[inside[known]] += weight * filled[neighbour[known]]
        rows.append(inside[~known])
        cols.append(variable[neighbour[~known]])
        values.append(np.full(int((~known).sum()), -weight))
    rows.append(np.arange(count))
    cols.append(np.arange(count))
    values.append(diagonal)
    system = sparse.csc_matrix(
        (np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))), shape=(count, count)
    )
    # The system is symmetric (neighbour weights are) and positive definite
    # (every hole touches a known pixel), so LU needs no pivoting: symmetric
    # mode with a minimum-degree ordering factorises ~30% faster.
    factor = linalg.splu(
        system, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options={"SymmetricMode": True}
    )
    solution = factor.solve(rhs)
    if noise > 0:
        solution = solution + rng.normal(0.0, noise, solution.shape)
    filled[unknown] = np.clip(solution, 0.0, 255.0)
    return filled.reshape(image.shape).astype(np.float32)


def predictor(model, batch_size=64):
    """Wraps a Keras classifier as the ``predict`` callable :class:`Faithfulness` takes.

    Args:
        model: A Keras model taking raw ``[B, H, W, 3]`` pixels; single output,
            or several with the main one named ``predictions``.
        batch_size: Largest batch handed to the model at once.

    Returns:
        A callable mapping float32 ``[N, H, W, 3]`` to float32 ``[N, K]``
        probabilities of the main output.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    main = layers.main_output_index(model)

    def predict(images):
        outputs = []
        for start in range(0, len(images), batch_size):
            probs = model.predict_on_batch(images[start : start + batch_size])
            if isinstance(probs, dict):
                probs = probs[MAIN_OUTPUT]
            elif isinstance(probs, list | tuple):
                probs = probs[main]
            outputs.append(np.asarray(probs, dtype=np.float32))
        return np.concatenate(outputs)

    return predict


@dataclasses.dataclass
class Faithfulness:
    """Accumulates deletion, insertion and (optionally) ROAD curves over batches.

    Every image is scored three times: with the method's map, a random-peaked
    and a centre-peaked baseline map. Each removal fraction is one ``predict``
    call on all the perturbed images of the batch.

    Args:
        predict: Callable taking float32 ``[N, H, W, 3]`` raw pixels in
            ``[0, 255]`` and returning probabilities ``[N, K]`` (numpy or tensor).
        seed: Seed of the random baseline maps, the tie-breaks and ROAD's noise.
        road: Also run ROAD (one sparse solve per image, map, order and
            fraction: the costly part; ``False`` skips it).
        fractions: Deletion/insertion fractions, increasing from 0 to 1.
        road_fractions: ROAD's removal fractions, in ``(0, 1)``.
        blur_sigma: Blur of the deletion/insertion baseline image (fraction of the side).
        road_noise: ROAD's imputation noise (pixel units).
    """

    predict: Callable
    seed: int = 0
    road: bool = True
    fractions: tuple = FRACTIONS
    road_fractions: tuple = ROAD_FRACTIONS
    blur_sigma: float = BLUR_SIGMA
    road_noise: float = ROAD_NOISE

    def __post_init__(self):
        self.fractions = tuple(float(f) for f in self.fractions)
        self.road_fractions = tuple(float(f) for f in self.road_fractions)
        area(np.zeros(len(self.fractions)), self.fractions)  # validates the order
        if self.fractions[0] != 0.0 or self.fractions[-1] != 1.0:
            raise ValueError(f"fractions must run from 0 to 1, got {list(self.fractions)}")
        area(np.zeros(len(self.road_fractions)), self.road_fractions)
        if not 0.0 < self.road_fractions[0] <= self.road_fractions[-1] < 1.0:
            raise ValueError(f"road_fractions must lie in (0, 1), got {list(self.road_fractions)}")
        if self.blur_sigma <= 0 or self.road_noise < 0:
            raise ValueError(
                f"need blur_sigma > 0 and road_noise >= 0, got {self.blur_sigma} and {self.road_noise}"
            )
        # Separate streams: the maps and tie-breaks do not depend on ``road``.
        self._map_rng = np.random.default_rng([self.seed, 0])
        self._noise_rng = np.random.default_rng([self.seed, 1])
        self._curves = {metric: {name: [] for name in _MAPS} for metric in _HIGHER_IS_BETTER}

    @property
    def count(self):
        """Number of images scored so far."""
        return sum(len(c) for c in self._curves["deletion"]["method"])

    def _probabilities(self, images, classes):
        probs = np.asarray(self.predict(np.asarray(images, dtype=np.float32)), dtype=np.float64)
        return probs[np.arange(len(images)), classes]

    def add(self, images, maps, classes):
        """Scores one batch.

        Args:
            images: ``[B, H, W, 3]`` raw pixels in ``[0, 255]``.
            maps: ``[B, H, W]`` saliency maps (higher = more relevant).
            classes: ``[B]`` int indices of the explained classes.
        """
        images = np.asarray(images, dtype=np.float32)
        maps = np.asarray(maps, dtype=np.float32)
        classes = np.asarray(classes, dtype=np.int64).reshape(-1)
        if images.ndim != 4 or maps.shape != images.shape[:3] or classes.shape != images.shape[:1]:
            raise ValueError(
                f"need images [B, H, W, C], maps [B, H, W] and classes [B]; got {images.shape}, "
                f"{maps.shape}, {classes.shape}"
            )
        count, height, width = maps.shape
        if count == 0:
            return
        all_maps = np.concatenate(
            [
                maps,
                pointing.random_maps(count, height, width, self._map_rng),
                pointing.center_maps(count, height, width),
            ]
        )
        # One tie-break key per pixel of each map; [3 maps * B, H, W].
        ranks = removal_ranks(all_maps, self._map_rng)
        tiled = np.tile(images, (len(_MAPS), 1, 1, 1))
        tiled_classes = np.tile(classes, len(_MAPS))
        self._perturbation_curves(tiled, blur(images, self.blur_sigma), ranks, tiled_classes)
        if self.road:
            self._road_curves(tiled, ranks, tiled_classes)

    def _store(self, metric, curves):
        # curves: [maps * B, F] in _MAPS order.
        for name, part in zip(_MAPS, np.split(curves, len(_MAPS)), strict=True):
            self._curves[metric][name].append(part)

    def _perturbation_curves(self, images, blurred, ranks, classes):
        blurred = np.tile(blurred, (len(_MAPS), 1, 1, 1))
        pixels = ranks[0].size
        deletion, insertion = [], []
        for fraction in self.fractions:
            taken = (ranks < round(fraction * pixels))[..., None]
            batch = np.concatenate([np.where(taken, blurred, images), np.where(taken, images, blurred)])
            probs = self._probabilities(batch, np.tile(classes, 2))
            deletion.append(probs[: len(images)])
            insertion.append(probs[len(images) :])
        self._store("deletion", np.stack(deletion, axis=1))
        self._store("insertion", np.stack(insertion, axis=1))

    def _road_curves(self, images, ranks, classes):
        pixels = ranks[0].size
        morf, lerf = [], []
        for fraction in self.road_fractions:
            removed = round(fraction * pixels)
            masks = np.concatenate([ranks < removed, ranks >= pixels - removed])
            batch = [
                impute(image, mask, self.road_noise, self._noise_rng)
                for image, mask in zip(np.concatenate([images, images]), masks, strict=True)
            ]
            probs = self._probabilities(np.stack(batch), np.tile(classes, 2))
            morf.append(probs[: len(images)])
            lerf.append(probs[len(images) :])
        self._store("road_morf", np.stack(morf, axis=1))
        self._store("road_lerf", np.stack(lerf, axis=1))

    def _metric(self, metric, fractions):
        curves = {name: np.concatenate(parts) for name, parts in self._curves[metric].items()}
        areas = {name: area(c, fractions) for name, c in curves.items()}
        sign = 1.0 if _HIGHER_IS_BETTER[metric] else -1.0
        result = {}
        for name in _MAPS:
            prefix = "" if name == "method" else f"{name}_"
            result[f"{prefix}auc"] = float(areas[name].mean())
        for name in _MAPS:
            prefix = "" if name == "method" else f"{name}_"
            result[f"{prefix}curve"] = [float(v) for v in curves[name].mean(axis=0)]
        for name in _MAPS[1:]:
            result[f"beats_{name}"] = float(np.mean(sign * (areas["method"] - areas[name]) > 0))
        return result

    def summary(self):
        """Returns the mean curves and areas as a strict-JSON-ready dict.

        Keys: ``n`` (images scored), ``fractions``, ``road_fractions`` (``None``
        without ROAD), ``blur_sigma``, ``road_noise`` and one entry per metric,
        ``deletion``, ``insertion``, ``road_morf``, ``road_lerf`` (the ROAD
        ones ``None`` without ROAD). A metric entry holds ``auc``,
        ``random_auc``, ``center_auc`` (mean area of the method's and the
        baselines' maps), ``curve``, ``random_curve``, ``center_curve`` (mean
        probability at each fraction), ``beats_random`` and ``beats_center``
        (share of images whose own area is strictly better than that
        baseline's). Before any image the metric entries are ``None``.
        Lower is better for ``deletion`` and ``road_morf``, higher for
        ``insertion`` and ``road_lerf``.
        """
        scored = self.count > 0
        result = {
            "n": self.count,
            "fractions": list(self.fractions),
            "road_fractions": list(self.road_fractions) if self.road else None,
            "blur_sigma": self.blur_sigma,
            "road_noise": self.road_noise,
        }
        for metric in _HIGHER_IS_BETTER:
            road = metric.startswith("road")
            fractions = self.road_fractions if road else self.fractions
            result[metric] = self._metric(metric, fractions) if scored and (self.road or not road) else None
        return result
