"""Writes "user photos": a class-per-folder tree of mixed sizes, formats and modes, and manifests over it.

What people bring instead of tiny-imagenet-200: ``photos/<class name>/...``
with class names holding spaces and non-ASCII characters, images of several
sizes (320x240, 500x375, 96x128, 64x64), JPEG and PNG with upper- and
lower-case extensions, some grayscale, some RGBA PNGs, some files two or
three folders below their class folder. Each image is a class's shape from
:mod:`preprocessing.sample` (:func:`preprocessing.sample.render_image`) scaled
up onto a noisy background of the photo's size, so the classes stay learnable
and the recorded box is the shape's box in the photo's pixels.

With ``--manifest`` it also writes ``manifest.csv`` and ``manifest.jsonl``
beside the tree: every photo once, paths relative to the manifest, some rows
with a split word (``train``/``valid``/``test`` and Vertex AI's
``TRAINING``/``VALIDATION``/``TEST``) and some with a box.

Usage::

    python -m preprocessing.sample_photos --out /tmp/photos [--manifest] [--classes 3] [--per-class 12]
    python -m preprocessing.task --raw-dir /tmp/photos/photos --output-dir /tmp/photos-data
    python -m preprocessing.task --raw-dir /tmp/photos/manifest.csv --output-dir /tmp/photos-manifest-data
"""

import collections
import csv
import dataclasses
import json
import math
import os
import sys

import numpy as np
from PIL import Image

# First, as in every command: this one imports no TensorFlow today, and stays quiet if it ever does.
from contracts import cli, quiet, voice

if __name__ == "__main__":
    quiet.quiet_tensorflow()

from preprocessing import sample

# (width, height) of the photos, in turn.
SIZES = ((320, 240), (500, 375), (96, 128), (64, 64))
EXTENSIONS = (".jpg", ".JPG", ".png", ".jpeg", ".PNG")
TREE = "photos"
MANIFESTS = ("manifest.csv", "manifest.jsonl")
# The split folders of a tree written with split_folders, and the split each holds.
SPLIT_FOLDERS = {"train": "train", "val": "valid", "test": "test"}
# Split words of the manifests' rows that carry one, in turn: ours and Vertex AI's.
SPLIT_WORDS = ("train", "TRAINING", "valid", "VALIDATION", "test", "TEST")
TRANSPARENT_BORDER = 2

Photo = collections.namedtuple("Photo", ["path", "label", "split", "box", "size", "mode"])
Photo.__doc__ = """One written photo.

Attributes:
    path: Relative to the tree, POSIX separators (``red square n°0/2019/img_001.jpg``).
    label: Its class name.
    split: ``train``, ``valid`` or ``test`` from its split folder, or ``None``.
    box: The shape's box ``(xmin, ymin, xmax, ymax)`` in the photo's pixels, inclusive.
    size: ``(width, height)``.
    mode: The PIL mode it was saved in (``RGB``, ``L``, ``RGBA``).
"""


@dataclasses.dataclass(frozen=True)
class PhotoSpec:
    """What :func:`write_photo_tree` writes.

    Attributes:
        classes: Number of classes.
        per_class: Photos per class.
        sizes: ``(width, height)`` of the photos, used in turn.
        split_folders: Put the classes under ``train/``, ``val/`` and ``test/``
            (every sixth photo of a class in val, the next in test).
        grayscale_every: Every n-th photo is single-channel (0: none).
        rgba_every: Every n-th PNG has an alpha channel (0: none).
        seed: Seed of everything random.
    """

    classes: int = 3
    per_class: int = 12
    sizes: tuple = SIZES
    split_folders: bool = False
    grayscale_every: int = 5
    rgba_every: int = 3
    seed: int = 0

    def __post_init__(self):
        if not 1 <= self.classes <= sample.MAX_CLASSES:
            raise ValueError(f"classes must be in [1, {sample.MAX_CLASSES}], got {self.classes}")
        if self.per_class < 1:
            raise ValueError(f"per_class must be >= 1, got {self.per_class}")
        if not self.sizes or any(min(size) < sample.IMAGE_SIZE for size in self.sizes):
            raise ValueError(f"sizes must be (width, height) pairs of at least {sample.IMAGE_SIZE}")


def photo_class_name(index):
    """The class name of class ``index``: its colour and shape, a space and a non-ASCII character."""
    shape, colour, _ = sample.class_style(index)
    return f"{colour} {shape} n°{index}"


def render_photo(index, rng, size):
    """Draws one photo of class ``index`` of ``size = (width, height)``.

    The 64x64 :func:`preprocessing.sample.render_image` is scaled to the
    photo's shorter side and centred on noise around its own background, so a
    centre crop of the photo is the sample image again.

    Returns:
        ``(image, box)``: an RGB PIL image and the shape's inclusive box in its pixels.
    """
    small, (x0, y0, x1, y1) = sample.render_image(index, rng)
    width, height = size
    side = min(width, height)
    scale = side / sample.IMAGE_SIZE
    corners = np.asarray(small)[[0, 0, -1, -1], [0, -1, 0, -1]].mean(axis=0)
    noise = rng.normal(0.0, 18.0, size=(height, width, 3))
    canvas = Image.fromarray(np.clip(corners + noise, 0, 255).astype(np.uint8), "RGB")
    left, top = (width - side) // 2, (height - side) // 2
    canvas.paste(small.resize((side, side), Image.BILINEAR), (left, top))
    box = (
        left + math.floor(x0 * scale),
        top + math.floor(y0 * scale),
        left + min(side, math.ceil((x1 + 1) * scale)) - 1,
        top + min(side, math.ceil((y1 + 1) * scale)) - 1,
    )
    return canvas, box


def _mode(spec, counter, extension):
    if spec.grayscale_every and counter % spec.grayscale_every == 0:
        return "L"
    if extension.lower() == ".png" and spec.rgba_every and counter % spec.rgba_every == 0:
        return "RGBA"
    return "RGB"


def _save(image, path, mode):
    if mode == "RGBA":
        image = image.convert("RGBA")
        alpha = np.zeros(image.size[::-1], dtype=np.uint8)
        border = TRANSPARENT_BORDER
        alpha[border:-border, border:-border] = 255  # A see-through frame, as cut-out photos have.
        image.putalpha(Image.fromarray(alpha, "L"))
    elif mode == "L":
        image = image.convert("L")
    is_png = path.lower().endswith(".png")
    image.save(path, format="PNG" if is_png else "JPEG", **({} if is_png else {"quality": 90}))


def _relative(label, j, extension):
    # Every third photo one folder below its class folder, every sixth (offset) two.
    name = f"img_{j:03d}{extension}"
    if j % 6 == 2:
        return f"{label}/2019/trip/{name}"
    if j % 3 == 1:
        return f"{label}/2019/{name}"
    return f"{label}/{name}"


def _split_folder(spec, j):
    if not spec.split_folders:
        return None
    return "val" if j % 6 == 4 else "test" if j % 6 == 5 else "train"


def write_photo_tree(out_dir, spec=None):
    """Writes a class-per-folder tree of photos into ``out_dir``.

    Args:
        out_dir: Target folder (created; must be empty or missing).
        spec: A :class:`PhotoSpec`; defaults to ``PhotoSpec()``.

    Returns:
        The :class:`Photo` s written, in writing order.

    Raises:
        FileExistsError: When ``out_dir`` holds anything.
    """
    spec = spec or PhotoSpec()
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise FileExistsError(f"{out_dir} is not empty")
    rng = np.random.default_rng(spec.seed)
    photos, counter = [], 0
    for index in range(spec.classes):
        label = photo_class_name(index)
        for j in range(spec.per_class):
            counter += 1
            size = spec.sizes[counter % len(spec.sizes)]
            extension = EXTENSIONS[counter % len(EXTENSIONS)]
            folder = _split_folder(spec, j)
            relative = _relative(label, j, extension)
            relative = f"{folder}/{relative}" if folder else relative
            mode = _mode(spec, counter, extension)
            image, box = render_photo(index, rng, size)
            path = os.path.join(out_dir, *relative.split("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            _save(image, path, mode)
            photos.append(Photo(relative, label, SPLIT_FOLDERS.get(folder), box, size, mode))
    return photos


def manifest_rows(photos, tree, manifest_dir, *, absolute=False):
    """The rows of a manifest over ``photos``: ``{path, label, split, box}`` each.

    Every fourth row carries a split word (:data:`SPLIT_WORDS` in turn), every
    other row its box; the others leave them empty.

    Args:
        photos: From :func:`write_photo_tree`.
        tree: The folder they were written into.
        manifest_dir: The folder the manifest goes to (relative paths start there).
        absolute: Write absolute paths instead.
    """
    rows = []
    for k, photo in enumerate(photos):
        full = os.path.join(os.path.abspath(tree), *photo.path.split("/"))
        path = full if absolute else os.path.relpath(full, os.path.abspath(manifest_dir)).replace(os.sep, "/")
        word = SPLIT_WORDS[(k // 4) % len(SPLIT_WORDS)] if k % 4 == 0 else ""
        rows.append(
            {"path": path, "label": photo.label, "split": word, "box": photo.box if k % 2 == 0 else None}
        )
    return rows


def write_manifest(path, rows):
    """Writes ``rows`` (:func:`manifest_rows`) as a ``.csv`` (with a header) or ``.jsonl`` manifest."""
    columns = ("xmin", "ymin", "xmax", "ymax")
    flat = [
        {
            "path": r["path"],
            "label": r["label"],
            "split": r["split"],
            **dict(zip(columns, r["box"] or ("",) * len(columns), strict=True)),
        }
        for r in rows
    ]
    with open(path, "w", newline="", encoding="utf-8") as f:
        if path.lower().endswith(".jsonl"):
            for row in flat:
                values = {key: value for key, value in row.items() if value != ""}
                f.write(json.dumps(values, ensure_ascii=False) + "\n")
            return
        writer = csv.DictWriter(f, fieldnames=["path", "label", "split", *columns])
        writer.writeheader()
        writer.writerows(flat)


def write_sample_photos(out_dir, spec=None, *, manifest=False):
    """Writes ``out_dir/photos/`` and, with ``manifest``, ``out_dir/manifest.csv`` and ``.jsonl``.

    Returns:
        ``(photos, rows)``: the :class:`Photo` s and the manifests' rows (``[]`` without ``manifest``).
    """
    tree = os.path.join(out_dir, TREE)
    photos = write_photo_tree(tree, spec)
    rows = manifest_rows(photos, tree, out_dir) if manifest else []
    for name in MANIFESTS if manifest else ():
        write_manifest(os.path.join(out_dir, name), rows)
    return photos, rows


def main(argv=None):
    """Command-line entry point."""
    parser = cli.ArgumentParser(
        prog="python -m preprocessing.sample_photos",
        description=__doc__.split("\n\n")[0]
        + f" The tree goes to OUT/{TREE}/ (pass it as --raw-dir); --manifest adds "
        + " and ".join(f"OUT/{name}" for name in MANIFESTS)
        + ", paths relative to OUT.",
    )
    parser.add_argument("--out", required=True, help=f"Folder to write into (the tree goes to OUT/{TREE}).")
    parser.add_argument("--classes", type=int, default=3, help="Number of classes.")
    parser.add_argument("--per-class", type=int, default=12, help="Photos per class.")
    parser.add_argument(
        "--split-folders", action="store_true", help="Put the class folders under train/, val/ and test/."
    )
    parser.add_argument(
        "--manifest",
        action="store_true",
        help="Also write OUT/manifest.csv and OUT/manifest.jsonl over the photos (some rows with a split "
        "word or a box).",
    )
    parser.add_argument("--seed", type=int, default=0, help="Random seed.")
    quiet.add_verbose_flag(parser)
    args = parser.parse_args(argv)
    try:
        spec = PhotoSpec(
            classes=args.classes, per_class=args.per_class, split_folders=args.split_folders, seed=args.seed
        )
        photos, rows = write_sample_photos(args.out, spec, manifest=args.manifest)
    except (ValueError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    written = f"wrote {len(photos)} photos of {spec.classes} classes to {os.path.join(args.out, TREE)}"
    voice.Voice("sample").say(written + (f" and {len(rows)} rows to each manifest" if rows else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
