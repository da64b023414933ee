"""Writes a learnable sample dataset in the exact tiny-imagenet-200 layout.

The real dataset cannot be downloaded everywhere (CI has no network), so the
demo and the tests use this generator. Each class is a shape of a
class-specific form, colour and fill drawn at a random position and size on a
noisy background; the recorded bounding box is the box of that shape, so
explanations can be checked against it. A few images are written as
single-channel (grayscale) JPEGs, as the real set has.

With ``--shortcut-patch`` the data carries a shortcut, to test that
explanations catch a model that learns it: every image gets a small square
marker in a class-specific colour (like a watermark) at a random spot away
from the object, inside the central area every random training crop keeps,
while the object is drawn in a random colour. Only the marker then tells every
class apart by colour, and a model that learns it looks away from the recorded
box (docs/preprocessing.md, "Sample data").

Usage::

    python -m preprocessing.sample --out /tmp/tiny-sample --classes 10 \
        --train-per-class 100 --val-per-class 20
"""

import dataclasses
import os
import sys

import numpy as np
from PIL import Image, ImageDraw

# First, as in every command: this one imports no TensorFlow today, and stays quiet if it ever does.
from contracts import cli, quiet, voice

if __name__ == "__main__":
    quiet.quiet_tensorflow()

IMAGE_SIZE = 64
SHAPES = ("square", "circle", "triangle", "cross", "diamond", "ring", "hbar", "vbar")
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (40, 60, 220),
    "yellow": (235, 215, 30),
    "magenta": (210, 40, 200),
    "cyan": (30, 200, 210),
    "orange": (245, 130, 20),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "purple": (110, 40, 160),
}
FILLS = ("solid", "outline", "striped")
MAX_CLASSES = len(SHAPES) * len(COLOURS) * len(FILLS)
# The shortcut marker: a square of this side (one eighth of the image's; a
# 6-pixel one took Minception twice the steps to learn), this many background
# pixels away from the object's box where there is room.
MARKER_SIZE = 8
MARKER_GAP = 2
# The trainer's crop policy takes a random CROP_SIZE square of each 64-pixel
# image (contracts.policy, trainer.augment.random_crop): the offsets run from 0
# to IMAGE_SIZE - CROP_SIZE, so only [8, 56) in each axis is in every crop. A
# marker outside it (a fixed corner) is cut out of most crops and never learned.
CROP_SIZE = 56
KEPT_AREA = (IMAGE_SIZE - CROP_SIZE, CROP_SIZE)


@dataclasses.dataclass(frozen=True)
class SampleSpec:
    """What :func:`write_sample_dataset` writes.

    Attributes:
        classes: Number of classes (wnids) to write.
        train_per_class: Images per class under ``train/``.
        val_per_class: Labelled images per class under ``val/``.
        test_images: Unlabelled images under ``test/``.
        grayscale_every: Every n-th image is written as a grayscale JPEG (0: none).
        seed: Seed of everything random.
        shortcut_patch: Mark every image with a square of its class's
            :func:`marker_colour` away from the object, and draw the object in
            a random colour (:func:`render_image`); at most ``len(COLOURS)``
            classes, so that every class has a marker colour of its own.
    """

    classes: int = 10
    train_per_class: int = 50
    val_per_class: int = 10
    test_images: int = 20
    grayscale_every: int = 37
    seed: int = 0
    shortcut_patch: bool = False

    def __post_init__(self):
        if not 1 <= self.classes <= MAX_CLASSES:
            raise ValueError(f"classes must be in [1, {MAX_CLASSES}], got {self.classes}")
        if self.shortcut_patch and self.classes >= len(COLOURS):
            raise ValueError(
                f"classes must be < {len(COLOURS)} with shortcut_patch (a marker colour each and one "
                f"left for the objects), got {self.classes}"
            )
        for field in ("train_per_class", "val_per_class", "test_images", "grayscale_every"):
            if getattr(self, field) < 0:
                raise ValueError(f"{field} must be >= 0, got {getattr(self, field)}")


def class_wnid(index):
    """Returns a WordNet-style id for class ``index`` (stable across runs)."""
    return f"n{1440000 + 7919 * index:08d}"


def class_style(index):
    """Returns ``(shape, colour_name, fill)`` that make class ``index`` recognisable."""
    shape = SHAPES[index % len(SHAPES)]
    colour = list(COLOURS)[(index // len(SHAPES) + index) % len(COLOURS)]
    fill = FILLS[(index // (len(SHAPES) * len(COLOURS))) % len(FILLS)]
    return shape, colour, fill


def marker_colour(index):
    """Returns the RGB colour of class ``index``'s shortcut marker: the ``index``-th of :data:`COLOURS`."""
    return COLOURS[list(COLOURS)[index]]


def class_name(index):
    """Returns the words.txt description of class ``index``."""
    shape, colour, fill = class_style(index)
    return f"{fill} {colour} {shape}, {colour} {shape}"


def _draw_shape(draw, shape, box, colour, fill):
    x0, y0, x1, y1 = box
    solid = colour if fill != "outline" else None
    width = 3
    if shape == "square":
        draw.rectangle(box, fill=solid, outline=colour, width=width)
    elif shape == "circle":
        draw.ellipse(box, fill=solid, outline=colour, width=width)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=max(3, (x1 - x0) // 5))
    elif shape == "triangle":
        draw.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=solid, outline=colour, width=width)
    elif shape == "diamond":
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=solid, outline=colour, width=width)
    elif shape == "cross":
        tw = max(3, (x1 - x0) // 3)
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        draw.rectangle((cx - tw // 2, y0, cx + tw // 2, y1), fill=colour)
        draw.rectangle((x0, cy - tw // 2, x1, cy + tw // 2), fill=colour)
    elif shape == "hbar":
        cy = (y0 + y1) // 2
        draw.rectangle((x0, cy - 3, x1, cy + 3), fill=colour)
        draw.rectangle((x0, y0, x0 + 3, y1), fill=colour)
        draw.rectangle((x1 - 3, y0, x1, y1), fill=colour)
    elif shape == "vbar":
        cx = (x0 + x1) // 2
        draw.rectangle((cx - 3, y0, cx + 3, y1), fill=colour)
        draw.rectangle((x0, y0, x1, y0 + 3), fill=colour)
        draw.rectangle((x0, y1 - 3, x1, y1), fill=colour)
    if fill == "striped":
        for y in range(y0 + 2, y1, 5):
            draw.line((x0, y, x1, y), fill=(128, 128, 128), width=1)


def marker_spot(box, rng):
    """Draws the top-left ``(x, y)`` of a shortcut marker inside :data:`KEPT_AREA`, away from ``box``.

    Every spot where the marker lies wholly inside the kept area and at least
    :data:`MARKER_GAP` pixels from the box is equally likely. A large object
    in the middle can leave no such spot; the marker then only keeps off the
    box, which always fits: an object is at most 33 pixels wide, so in each
    axis the 48-pixel kept area leaves 8 pixels on one side of it.
    """
    low, high = KEPT_AREA
    starts = np.arange(low, high - MARKER_SIZE + 1)
    xs, ys = np.meshgrid(starts, starts)
    x0, y0, x1, y1 = box
    for gap in (MARKER_GAP, 0):
        apart_x = (xs + MARKER_SIZE - 1 < x0 - gap) | (xs > x1 + gap)
        apart_y = (ys + MARKER_SIZE - 1 < y0 - gap) | (ys > y1 + gap)
        spots = np.flatnonzero(apart_x | apart_y)
        if len(spots):
            spot = spots[rng.integers(len(spots))]
            return int(xs.flat[spot]), int(ys.flat[spot])
    raise ValueError(f"no room for a {MARKER_SIZE}-pixel marker beside the box {box}")


def render_image(index, rng, marked_classes=0):
    """Draws one image of class ``index``.

    Args:
        index: Class index.
        rng: A numpy ``Generator``; without markers the draws (and so the
            images) are exactly those of a dataset written before markers existed.
        marked_classes: 0: no marker. Else the dataset's number of classes,
            each marked with its own colour (:func:`marker_colour`): the image
            gets its class's marker (:func:`marker_spot`) and the object a
            random one of the :data:`COLOURS` no marker uses, so that only the
            marker's colour follows the class.

    Returns:
        ``(image, box)``: a 64x64 RGB PIL image and the object's box
        ``(xmin, ymin, xmax, ymax)`` in pixels, inclusive (never the marker's).
    """
    shape, colour_name, fill = class_style(index)
    base = rng.integers(70, 186, size=3)
    noise = rng.normal(0.0, 18.0, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    size = int(rng.integers(18, 34))
    x0 = int(rng.integers(0, IMAGE_SIZE - size))
    y0 = int(rng.integers(0, IMAGE_SIZE - size))
    box = (x0, y0, x0 + size - 1, y0 + size - 1)
    if marked_classes:
        unmarked = list(COLOURS)[marked_classes:]
        colour_name = unmarked[int(rng.integers(len(unmarked)))]
    draw = ImageDraw.Draw(image)
    _draw_shape(draw, shape, box, COLOURS[colour_name], fill)
    if marked_classes:
        x, y = marker_spot(box, rng)
        draw.rectangle((x, y, x + MARKER_SIZE - 1, y + MARKER_SIZE - 1), fill=marker_colour(index))
    return image, box


def _marked(spec):
    return spec.classes if spec.shortcut_patch else 0


def _is_gray(spec, counter):
    return bool(spec.grayscale_every) and counter % spec.grayscale_every == 0


def _save(image, path, grayscale):
    if grayscale:
        image = image.convert("L")
    image.save(path, format="JPEG", quality=90)


def _write_words(out_dir, wnids, rng):
    # The real words.txt describes all ~82k WordNet synsets, far more than the
    # 200 in wnids.txt; a few distractors keep readers honest about filtering.
    lines = [f"{wnid}\t{class_name(i)}" for i, wnid in enumerate(wnids)]
    for k in range(max(5, len(wnids))):
        lines.append(f"n{9000000 + 13 * k:08d}\tunused synset {k}")
    order = rng.permutation(len(lines))
    with open(os.path.join(out_dir, "words.txt"), "w") as f:
        f.write("".join(lines[i] + "\n" for i in order))


def write_sample_dataset(out_dir, spec=None, *, speaker=None):
    """Writes a dataset in the tiny-imagenet-200 layout into ``out_dir``.

    Args:
        out_dir: Target folder (created; must not already hold a dataset).
        spec: A :class:`SampleSpec`; defaults to ``SampleSpec()``.
        speaker: Optional :class:`contracts.voice.Voice` for the progress lines.

    Returns:
        A dict with ``wnids`` (in class-index order), ``train_boxes``
        (file name -> box), ``val`` (file name -> (wnid, box)) and ``test``
        (file names).
    """
    spec = spec or SampleSpec()
    rng = np.random.default_rng(spec.seed)
    os.makedirs(out_dir, exist_ok=True)
    if os.path.exists(os.path.join(out_dir, "wnids.txt")):
        raise FileExistsError(f"{out_dir} already holds a dataset (wnids.txt exists)")
    wnids = [class_wnid(i) for i in range(spec.classes)]
    # The real wnids.txt is not sorted; class indices come from sorting it.
    with open(os.path.join(out_dir, "wnids.txt"), "w") as f:
        f.write("".join(wnids[i] + "\n" for i in rng.permutation(len(wnids))))
    _write_words(out_dir, wnids, rng)

    counter = 0
    train_boxes = {}
    steps = speaker.progress(spec.classes, "classes") if speaker else None
    for index, wnid in enumerate(wnids):
        image_dir = os.path.join(out_dir, "train", wnid, "images")
        os.makedirs(image_dir)
        rows = []
        for i in range(spec.train_per_class):
            name = f"{wnid}_{i}.JPEG"
            image, box = render_image(index, rng, _marked(spec))
            counter += 1
            _save(image, os.path.join(image_dir, name), _is_gray(spec, counter))
            rows.append(f"{name}\t{box[0]}\t{box[1]}\t{box[2]}\t{box[3]}\n")
            train_boxes[name] = box
        with open(os.path.join(out_dir, "train", wnid, f"{wnid}_boxes.txt"), "w") as f:
            f.write("".join(rows))
        if steps:
            steps.advance(detail=f"{wnid}: {spec.train_per_class} train images")
    if steps:
        steps.close()

    val_dir = os.path.join(out_dir, "val", "images")
    os.makedirs(val_dir)
    labels = np.repeat(np.arange(spec.classes), spec.val_per_class)
    labels = labels[rng.permutation(len(labels))]
    val = {}
    rows = []
    for i, index in enumerate(labels):
        name = f"val_{i}.JPEG"
        image, box = render_image(int(index), rng, _marked(spec))
        counter += 1
        _save(image, os.path.join(val_dir, name), _is_gray(spec, counter))
        rows.append(f"{name}\t{wnids[index]}\t{box[0]}\t{box[1]}\t{box[2]}\t{box[3]}\n")
        val[name] = (wnids[index], box)
    with open(os.path.join(out_dir, "val", "val_annotations.txt"), "w") as f:
        f.write("".join(rows))

    test_dir = os.path.join(out_dir, "test", "images")
    os.makedirs(test_dir)
    test = []
    for i in range(spec.test_images):
        name = f"test_{i}.JPEG"
        image, _ = render_image(int(rng.integers(spec.classes)), rng, _marked(spec))
        _save(image, os.path.join(test_dir, name), False)
        test.append(name)
    if speaker:
        speaker.say(
            f"wrote {spec.classes} classes, {len(train_boxes)} train, "
            f"{len(val)} val, {len(test)} test images to {out_dir}"
        )
    return {"wnids": wnids, "train_boxes": train_boxes, "val": val, "test": test}


def main(argv=None):
    """Command-line entry point."""
    parser = cli.ArgumentParser(prog="python -m preprocessing.sample", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="Folder to write the dataset into.")
    parser.add_argument("--classes", type=int, default=10, help="Number of classes.")
    parser.add_argument("--train-per-class", type=int, default=50, help="train/ images per class.")
    parser.add_argument("--val-per-class", type=int, default=10, help="val/ images per class.")
    parser.add_argument("--test-images", type=int, default=20, help="Unlabelled test/ images.")
    parser.add_argument("--seed", type=int, default=0, help="Random seed.")
    parser.add_argument(
        "--shortcut-patch",
        action="store_true",
        help="Mark every image with a class-coloured square away from the object and draw the object "
        "in a colour no marker uses: a shortcut a model can learn instead of the object (at most 9 classes).",
    )
    quiet.add_verbose_flag(parser)
    args = parser.parse_args(argv)
    try:
        spec = SampleSpec(
            classes=args.classes,
            train_per_class=args.train_per_class,
            val_per_class=args.val_per_class,
            test_images=args.test_images,
            seed=args.seed,
            shortcut_patch=args.shortcut_patch,
        )
        write_sample_dataset(args.out, spec, speaker=voice.Voice("sample"))
    except (ValueError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
