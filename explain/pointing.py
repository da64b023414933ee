"""The pointing game and the share of heatmap energy inside the object's box.

A heatmap *hits* when its maximum lies inside the ground-truth box (Zhang et
al., "Top-down Neural Attention by Excitation Backprop"); with a tolerance of
``t`` pixels a peak at Euclidean distance ``<= t`` from the box also counts.
The energy in the box is ``sum(map inside box) / sum(map)``.

Both are compared with two baselines scored on the same images and boxes: a
Gaussian peaked at the image centre (objects are often central, so this is the
baseline to beat) and a Gaussian peaked at a uniformly random pixel (seeded).

Boxes are ``(xmin, ymin, xmax, ymax)`` in pixels, inclusive, in the
heatmap's coordinates (shift them first when the images were cropped).
"""

import dataclasses

import numpy as np

# Baseline maps are Gaussians of this standard deviation, as a fraction of the
# image side: wide enough to be a plausible attention map.
BASELINE_SIGMA = 0.25

# What is recorded per scored image.
_COLUMNS = ("label", "hit", "energy", "center", "center_energy", "random", "random_energy")


def peaks(heatmaps):
    """Returns the ``(y, x)`` of each map's maximum (first one on ties), shape ``[B, 2]``."""
    heatmaps = np.asarray(heatmaps)
    flat = heatmaps.reshape(len(heatmaps), -1).argmax(axis=1)
    return np.stack(np.unravel_index(flat, heatmaps.shape[1:]), axis=1)


def pointing_hits(heatmaps, boxes, tolerance=0.0):
    """Returns a bool ``[B]``: whether each map's peak lies within ``tolerance`` pixels of its box."""
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    points = peaks(heatmaps)
    boxes = np.asarray(boxes)
    y, x = points[:, 0], points[:, 1]
    dx = np.maximum(0, np.maximum(boxes[:, 0] - x, x - boxes[:, 2]))
    dy = np.maximum(0, np.maximum(boxes[:, 1] - y, y - boxes[:, 3]))
    return np.hypot(dx, dy) <= tolerance


def box_masks(boxes, height, width):
    """Returns bool masks ``[B, height, width]``, true inside each (inclusive) box."""
    boxes = np.asarray(boxes)
    rows = np.arange(height)[None, :, None]
    cols = np.arange(width)[None, None, :]
    inside_y = (rows >= boxes[:, 1, None, None]) & (rows <= boxes[:, 3, None, None])
    inside_x = (cols >= boxes[:, 0, None, None]) & (cols <= boxes[:, 2, None, None])
    return inside_y & inside_x


def energy_in_box(heatmaps, boxes):
    """Returns float ``[B]``: each map's share of its total (non-negative) mass inside its box.

    A map with no mass at all has nothing inside the box and scores 0.
    """
    heatmaps = np.clip(np.asarray(heatmaps, dtype=np.float64), 0.0, None)
    masks = box_masks(boxes, *heatmaps.shape[1:])
    total = heatmaps.sum(axis=(1, 2))
    inside = (heatmaps * masks).sum(axis=(1, 2))
    return np.where(total > 0, inside / np.where(total > 0, total, 1.0), 0.0)


def gaussian_maps(centres, height, width, sigma=BASELINE_SIGMA):
    """Returns float32 ``[B, height, width]`` Gaussians peaked at the ``(y, x)`` centres."""
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    rows = np.arange(height)[None, :, None]
    cols = np.arange(width)[None, None, :]
    spread = 2.0 * (sigma * max(height, width)) ** 2
    dist = (rows - centres[:, 0, None, None]) ** 2 + (cols - centres[:, 1, None, None]) ** 2
    return np.exp(-dist / spread).astype(np.float32)


def center_maps(count, height, width):
    """Baseline maps peaked at the image centre (pixel ``(height // 2, width // 2)``)."""
    return gaussian_maps(np.tile([[height // 2, width // 2]], (count, 1)), height, width)


def random_maps(count, height, width, rng):
    """Baseline maps peaked at uniformly random pixels drawn from ``rng`` (a numpy Generator)."""
    centres = np.stack([rng.integers(0, height, count), rng.integers(0, width, count)], axis=1)
    return gaussian_maps(centres, height, width)


@dataclasses.dataclass
class PointingGame:
    """Accumulates pointing-game results over batches, with both baselines.

    Args:
        tolerance: Pixel tolerance of a hit.
        seed: Seed of the random-peak baseline.
    """

    tolerance: float = 0.0
    seed: int = 0

    def __post_init__(self):
        if self.tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {self.tolerance}")
        self._rng = np.random.default_rng(self.seed)
        self._rows = {key: [] for key in _COLUMNS}

    def add(self, heatmaps, boxes, labels, has_box=None):
        """Scores one batch; images without a box (``has_box`` false) are skipped.

        Args:
            heatmaps: ``[B, H, W]`` maps.
            boxes: ``[B, 4]`` boxes in the maps' coordinates.
            labels: ``[B]`` true class indices (for the per-class table).
            has_box: Optional bool ``[B]``.
        """
        heatmaps = np.asarray(heatmaps)
        keep = np.ones(len(heatmaps), bool) if has_box is None else np.asarray(has_box, bool)
        if not keep.any():
            return
        heatmaps, boxes = heatmaps[keep], np.asarray(boxes)[keep]
        count, height, width = heatmaps.shape
        center = center_maps(count, height, width)
        rand = random_maps(count, height, width, self._rng)
        rows = self._rows
        rows["label"].extend(int(v) for v in np.asarray(labels)[keep])
        rows["hit"].extend(pointing_hits(heatmaps, boxes, self.tolerance))
        rows["energy"].extend(energy_in_box(heatmaps, boxes))
        rows["center"].extend(pointing_hits(center, boxes, self.tolerance))
        rows["center_energy"].extend(energy_in_box(center, boxes))
        rows["random"].extend(pointing_hits(rand, boxes, self.tolerance))
        rows["random_energy"].extend(energy_in_box(rand, boxes))

    @property
    def count(self):
        """Number of images scored so far."""
        return len(self._rows["label"])

    @property
    def hit_rate(self):
        """Pointing-game hit rate of the images scored so far (``None`` before any).

        Cheap enough to read after every batch, unlike :meth:`summary`, which
        rebuilds every per-class table.
        """
        hits = self._rows["hit"]
        return float(np.mean(hits)) if hits else None

    def _summary(self, select):
        rows = {key: np.asarray(values, dtype=np.float64)[select] for key, values in self._rows.items()}

        def mean(key):
            return float(rows[key].mean()) if len(rows[key]) else None

        return {
            "n": len(rows["label"]),
            "hit_rate": mean("hit"),
            "center_baseline": mean("center"),
            "random_baseline": mean("random"),
            "energy_in_box": mean("energy"),
            "energy_center_baseline": mean("center_energy"),
            "energy_random_baseline": mean("random_energy"),
        }

    def summary(self, class_names=None):
        """Returns the overall and per-class results as a JSON-ready dict.

        Keys: ``n``, ``tolerance``, ``pointing_game`` (``hit_rate``,
        ``center_baseline``, ``random_baseline``), ``energy_in_box`` (the
        mean share), ``energy_baselines`` (``center_baseline``,
        ``random_baseline``) and ``per_class`` (one entry per class seen, by
        class index, with the same rates). Rates are ``None`` when no image
        was scored.
        """
        labels = np.asarray(self._rows["label"], dtype=np.int64)
        overall = self._summary(np.ones(len(labels), bool))
        per_class = []
        for label in sorted(set(labels.tolist())):
            entry = {"class_index": label}
            if class_names is not None:
                entry["class_name"] = class_names[label]
            entry.update(self._summary(labels == label))
            per_class.append(entry)
        return {
            "n": overall["n"],
            "tolerance": self.tolerance,
            "pointing_game": {
                "hit_rate": overall["hit_rate"],
                "center_baseline": overall["center_baseline"],
                "random_baseline": overall["random_baseline"],
            },
            "energy_in_box": overall["energy_in_box"],
            "energy_baselines": {
                "center_baseline": overall["energy_center_baseline"],
                "random_baseline": overall["energy_random_baseline"],
            },
            "per_class": per_class,
        }


def shift_boxes(boxes, offset, size):
    """Moves boxes into a crop's coordinates and clips them to it.

    Args:
        boxes: ``[B, 4]`` boxes in the original image.
        offset: ``(dy, dx)`` of the crop's top-left corner in the original image.
        size: ``(height, width)`` of the crop.

    Returns:
        ``(boxes, valid)``: the shifted, clipped int boxes and a bool ``[B]``
        that is false for boxes lying entirely outside the crop.
    """
    boxes = np.asarray(boxes, dtype=np.int64).copy()
    dy, dx = offset
    boxes[:, [0, 2]] -= dx
    boxes[:, [1, 3]] -= dy
    height, width = size
    valid = (boxes[:, 2] >= 0) & (boxes[:, 3] >= 0) & (boxes[:, 0] < width) & (boxes[:, 1] < height)
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, width - 1)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, height - 1)
    return boxes, valid
