"""Pictures of explanations: original | heatmap | overlay panels, grids, PNG files.

A panel is the book's figure 7.15 for one image: the input, the class
activation map in a jet colour map and the map blended over the input, under
a title naming the true class, the predicted class and its confidence. Panels
are plain ``uint8 [H, W, 3]`` arrays, ready for ``tf.summary.image`` or PNG.
Drawing uses PIL only (its default font), so no plotting library is needed.
"""

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from contracts import storage

TILE = 128
GAP = 4
FONT_SIZE = 11
_BACKGROUND = (24, 24, 24)
_TEXT = (235, 235, 235)
_RIGHT = (120, 220, 120)
_WRONG = (245, 110, 100)
_BOX = (0, 255, 0)


def _font():
    return ImageFont.load_default(size=FONT_SIZE)


def jet(heatmap):
    """Maps values in ``[0, 1]`` to the jet colour map; returns uint8 ``[..., 3]``."""
    v = np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0)[..., None]
    # Jet is a piecewise-linear ramp per channel, peaking at 3/4, 1/2 and 1/4.
    centres = np.array([0.75, 0.5, 0.25], np.float32)
    rgb = np.clip(1.5 - np.abs(4.0 * v - 4.0 * centres), 0.0, 1.0)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def to_uint8(image):
    """Converts a float ``[H, W, C]`` image in ``[0, 255]`` to uint8 RGB."""
    image = np.clip(np.asarray(image, dtype=np.float32), 0.0, 255.0)
    if image.ndim == 2 or image.shape[-1] == 1:
        image = np.broadcast_to(image.reshape(*image.shape[:2], 1), (*image.shape[:2], 3))
    return (image + 0.5).astype(np.uint8)


def overlay(image, heatmap, alpha=0.45):
    """Blends the jet-coloured ``heatmap`` over ``image``; returns uint8 ``[H, W, 3]``."""
    base = to_uint8(image).astype(np.float32)
    blended = (1.0 - alpha) * base + alpha * jet(heatmap).astype(np.float32)
    return (blended + 0.5).astype(np.uint8)


def short_name(name):
    """Returns the first synonym of a words.txt description (``"goldfish, Carassius"`` -> ``"goldfish"``)."""
    return str(name).split(",")[0].strip()


def _tile(array, box=None, peak=None):
    height, width = array.shape[:2]
    image = Image.fromarray(array).resize((TILE, TILE), Image.NEAREST)
    sx, sy = TILE / width, TILE / height
    draw = ImageDraw.Draw(image)
    if box is not None:
        x0, y0, x1, y1 = box
        draw.rectangle((x0 * sx, y0 * sy, (x1 + 1) * sx - 1, (y1 + 1) * sy - 1), outline=_BOX, width=2)
    if peak is not None:
        cy, cx = (peak[0] + 0.5) * sy, (peak[1] + 0.5) * sx
        draw.line((cx - 5, cy, cx + 5, cy), fill=(255, 255, 255), width=2)
        draw.line((cx, cy - 5, cx, cy + 5), fill=(255, 255, 255), width=2)
    return image


def panel(image, heatmap, true_name=None, pred_name=None, confidence=None, box=None):
    """Draws one original | heatmap | overlay panel.

    Args:
        image: ``[H, W, 3]`` float pixels in ``[0, 255]`` (what the model saw).
        heatmap: ``[H, W]`` map in ``[0, 1]``.
        true_name: True class name, or ``None`` when unknown.
        pred_name: Predicted class name, or ``None``.
        confidence: Probability of the predicted class, or ``None``.
        box: Optional ``(xmin, ymin, xmax, ymax)`` object box, drawn on the
            original; the heatmap's peak is marked on the overlay.

    Returns:
        uint8 ``[h, w, 3]``.
    """
    heatmap = np.asarray(heatmap, dtype=np.float32)
    peak = np.unravel_index(np.argmax(heatmap), heatmap.shape)
    tiles = [
        _tile(to_uint8(image), box=box),
        _tile(jet(heatmap)),
        _tile(overlay(image, heatmap), box=box, peak=peak),
    ]
    font = _font()
    lines = []
    if true_name is not None:
        lines.append((f"true: {short_name(true_name)}", _TEXT))
    if pred_name is not None:
        text = f"pred: {short_name(pred_name)}"
        if confidence is not None:
            text += f" ({100.0 * float(confidence):.1f}%)"
        colour = _TEXT if true_name is None else (_RIGHT if pred_name == true_name else _WRONG)
        lines.append((text, colour))
    line_height = FONT_SIZE + 3
    header = GAP + line_height * len(lines)
    width = 3 * TILE + 4 * GAP
    canvas = Image.new("RGB", (width, header + TILE + GAP), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for row, (text, colour) in enumerate(lines):
        draw.text((GAP, GAP + row * line_height), text, fill=colour, font=font)
    for column, tile in enumerate(tiles):
        canvas.paste(tile, (GAP + column * (TILE + GAP), header))
    return np.asarray(canvas)


def grid(panels, columns=2):
    """Lays equally sized ``panels`` out in rows of ``columns``; returns uint8 ``[H, W, 3]``."""
    panels = [np.asarray(p) for p in panels]
    if not panels:
        raise ValueError("grid needs at least one panel")
    height = max(p.shape[0] for p in panels)
    width = max(p.shape[1] for p in panels)
    columns = max(1, min(columns, len(panels)))
    rows = -(-len(panels) // columns)
    canvas = np.zeros((rows * height, columns * width, 3), np.uint8)
    canvas[...] = _BACKGROUND
    for i, p in enumerate(panels):
        r, c = divmod(i, columns)
        canvas[r * height : r * height + p.shape[0], c * width : c * width + p.shape[1]] = p
    return canvas


def png_bytes(array):
    """Encodes a uint8 ``[H, W, 3]`` array as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def save_png(array, path):
    """Writes a uint8 ``[H, W, 3]`` array as a PNG file (local path or ``gs://``)."""
    storage.write_bytes(path, png_bytes(array))
