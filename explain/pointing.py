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

Two cases give no honest score, and the module names both in one place:
a dataset or selection without boxes (:func:`skip_reason`: the game is not
played, so no 0 or 1 is ever reported for it) and boxes that cover (nearly)
the whole image (the summary's ``uninformative`` line: every peak hits, the
baselines' too, so the score cannot tell the model from its baselines).
"""

import dataclasses

import numpy as np

# Baseline maps are Gaussians of this standard deviation, as a fraction of the
# image side: wide enough to be a plausible attention map.
BASELINE_SIGMA = 0.25

# A box covering at least this share of the image's area counts as "the whole image": any peak,
# a baseline's included, lands in it (a random peak with at least this probability).
WHOLE_IMAGE_AREA = 0.9
# The game is flagged as uninformative when more than this share of the scored images has such a box.
WHOLE_IMAGE_SHARE = 0.5
# Start of the line that says the game was not played (said once by every command that plays it).
SKIPPED = "pointing game skipped"
# Start of the line that flags boxes covering the whole image.
UNINFORMATIVE = "the pointing game cannot tell the model from its baselines"

# What is recorded per scored image.
_COLUMNS = ("label", "hit", "energy", "center", "center_energy", "random", "random_energy", "whole")


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


def box_areas(boxes, height, width):
    """Returns float ``[B]``: the share of a ``height`` x ``width`` image each (inclusive) box covers."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    sides_x = np.clip(boxes[:, 2] - boxes[:, 0] + 1, 0, width)
    sides_y = np.clip(boxes[:, 3] - boxes[:, 1] + 1, 0, height)
    return sides_x * sides_y / (height * width)


def skip_reason(box_count, split, has_box=None):
    """Why the pointing game cannot be played on ``split``, or ``None`` when it can.

    Args:
        box_count: :meth:`contracts.dataset.DatasetInfo.box_count` of the split: records with a
            box, or ``None`` for a dataset written before the count existed.
        split: Name of the split (for the message).
        has_box: Optional bool ``[N]`` of the selected images; where the count says nothing
            (``None``, or boxes elsewhere in the split) a selection without any box is skipped too.

    Returns:
        The reason, e.g. ``"the dataset has no object boxes (metadata.json: 0 boxes in test)"``.
    """
    if box_count == 0:
        return f"the dataset has no object boxes (metadata.json: 0 boxes in {split})"
    if has_box is not None and not np.asarray(has_box, bool).any():
        return f"none of the {len(has_box)} selected {split} images has an object box"
    return None


def skipped_line(reason):
    """The one line that says the game was skipped and why."""
    return f"{SKIPPED}: {reason}"


def skipped_summary(reason, tolerance=0.0):
    """The :meth:`PointingGame.summary` of a game that was not played: a reason, no score.

    Keys: ``n`` (0), ``tolerance`` and ``pointing_game`` = ``{"skipped": reason}``; the energy
    and per-class entries are absent, so nothing reads a 0 or a 1 that was never measured.
    """
    return {"n": 0, "tolerance": tolerance, "pointing_game": {"skipped": reason}}


def uninformative_line(game, whole_count, count):
    """The line that flags a game whose boxes cover the whole image (``None`` when they do not).

    Args:
        game: The ``pointing_game`` entry of a summary (``hit_rate`` and the two baselines).
        whole_count: Scored images whose box covers at least :data:`WHOLE_IMAGE_AREA` of the image.
        count: Scored images.
    """
    if not count or whole_count <= WHOLE_IMAGE_SHARE * count:
        return None
    return (
        f"{UNINFORMATIVE}: the boxes of {whole_count} of {count} scored images cover at least "
        f"{WHOLE_IMAGE_AREA:.0%} of the image, so the centre and random baselines hit too "
        f"({game['center_baseline']:.3f} and {game['random_baseline']:.3f} "
        f"against the model's {game['hit_rate']:.3f})"
    )


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
        rows["whole"].extend(box_areas(boxes, height, width) >= WHOLE_IMAGE_AREA)

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
            "whole_image_boxes": mean("whole"),
        }

    def summary(self, class_names=None):
        """Returns the overall and per-class results as a JSON-ready dict.

        Keys: ``n``, ``tolerance``, ``pointing_game`` (``hit_rate``,
        ``center_baseline``, ``random_baseline``, ``whole_image_boxes``: the
        share of images whose box covers the whole image, and
        ``uninformative``: :func:`uninformative_line` or ``None``),
        ``energy_in_box`` (the mean share), ``energy_baselines``
        (``center_baseline``, ``random_baseline``) and ``per_class`` (one
        entry per class seen, by class index, with the same rates). Rates are
        ``None`` when no image was scored.
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
        game = {
            "hit_rate": overall["hit_rate"],
            "center_baseline": overall["center_baseline"],
            "random_baseline": overall["random_baseline"],
            "whole_image_boxes": overall["whole_image_boxes"],
        }
        game["uninformative"] = uninformative_line(game, int(np.sum(self._rows["whole"])), self.count)
        return {
            "n": overall["n"],
            "tolerance": self.tolerance,
            "pointing_game": game,
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
