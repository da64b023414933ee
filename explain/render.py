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


# Line colours of the faithfulness plots: the method, then its two baselines.
_CURVE_COLOURS = {"method": (255, 150, 40), "random": (170, 170, 170), "center": (90, 170, 255)}
# Panel titles of the faithfulness plots, with the direction that is better.
_CURVE_TITLES = {
    "deletion": ("deletion (lower area = better)", "fraction of pixels blurred"),
    "insertion": ("insertion (higher area = better)", "fraction of pixels restored"),
    "road_morf": ("ROAD MoRF (lower area = better)", "fraction imputed, most relevant first"),
    "road_lerf": ("ROAD LeRF (higher area = better)", "fraction imputed, least relevant first"),
}
PLOT_WIDTH = 340
PLOT_HEIGHT = 250


def _plot(metric, entry, fractions, label):
    """Draws one metric's three curves; returns a PIL image of PLOT_WIDTH x PLOT_HEIGHT."""
    font = _font()
    image = Image.new("RGB", (PLOT_WIDTH, PLOT_HEIGHT), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    title, xlabel = _CURVE_TITLES[metric]
    left, right, top, bottom = 40, PLOT_WIDTH - 12, 24, PLOT_HEIGHT - 58
    draw.text((GAP, GAP), title, fill=_TEXT, font=font)
    curves = {name: entry[f"{'' if name == 'method' else name + '_'}curve"] for name in _CURVE_COLOURS}
    highest = max(max(c) for c in curves.values())
    # Probabilities are often small; a fixed [0, 1] axis would flatten them.
    y_top = min(1.0, max(0.1, np.ceil(highest * 10.0 - 1e-9) / 10.0))
    x_lo, x_hi = fractions[0], fractions[-1]

    def point(x, y):
        px = left + (x - x_lo) / (x_hi - x_lo) * (right - left)
        return px, bottom - min(y, y_top) / y_top * (bottom - top)

    draw.rectangle((left, top, right, bottom), outline=_TEXT)
    for tick in (x_lo, (x_lo + x_hi) / 2, x_hi):
        px, _ = point(tick, 0.0)
        draw.line((px, bottom, px, bottom + 3), fill=_TEXT)
        text = f"{tick:g}"
        draw.text((px - draw.textlength(text, font=font) / 2, bottom + 4), text, fill=_TEXT, font=font)
    for tick in (0.0, y_top / 2, y_top):
        _, py = point(x_lo, tick)
        draw.line((left - 3, py, left, py), fill=_TEXT)
        text = f"{tick:.2g}"
        origin = (left - 5 - draw.textlength(text, font=font), py - FONT_SIZE / 2)
        draw.text(origin, text, fill=_TEXT, font=font)
    ylabel = "y: p(class)"
    draw.text((right - draw.textlength(ylabel, font=font), GAP), ylabel, fill=_TEXT, font=font)
    width = draw.textlength(xlabel, font=font)
    draw.text(((left + right - width) / 2, bottom + 18), xlabel, fill=_TEXT, font=font)
    names = {"method": label, "random": "random", "center": "centre"}
    legend_x = GAP
    for name, colour in _CURVE_COLOURS.items():
        points = [point(x, y) for x, y in zip(fractions, curves[name], strict=True)]
        draw.line(points, fill=colour, width=2)
        for px, py in points:
            draw.ellipse((px - 2, py - 2, px + 2, py + 2), fill=colour)
        auc = entry[f"{'' if name == 'method' else name + '_'}auc"]
        text = f"{names[name]} {auc:.3f}"
        legend_y = PLOT_HEIGHT - FONT_SIZE - GAP - 2
        draw.line((legend_x, legend_y + 6, legend_x + 14, legend_y + 6), fill=colour, width=3)
        draw.text((legend_x + 18, legend_y), text, fill=colour, font=font)
        legend_x += 18 + draw.textlength(text, font=font) + 12
    return image


def curves(summary, label="method"):
    """Plots the curves of an :meth:`explain.faithfulness.Faithfulness.summary`.

    One panel per metric present (deletion, insertion and, when run, ROAD
    MoRF and LeRF), two per row; each shows the mean class probability of the
    method's maps and of the random and centre baselines, with their areas
    in the legend.

    Args:
        summary: The summary dict (with at least one scored image).
        label: Legend name of the method's curve (e.g. ``"gradcam"``).

    Returns:
        uint8 ``[H, W, 3]``, ``2 * PLOT_WIDTH + 3 * GAP`` wide.
    """
    panels = []
    for metric in _CURVE_TITLES:
        entry = summary.get(metric)
        if entry is None:
            continue
        fractions = summary["road_fractions" if metric.startswith("road") else "fractions"]
        panels.append(np.asarray(_plot(metric, entry, fractions, label)))
    if not panels:
        raise ValueError("The summary has no scored metric to plot (n = 0?).")
    rows = -(-len(panels) // 2)
    canvas = Image.new("RGB", (2 * PLOT_WIDTH + 3 * GAP, rows * (PLOT_HEIGHT + GAP) + GAP), _BACKGROUND)
    for i, array in enumerate(panels):
        row, column = divmod(i, 2)
        origin = (GAP + column * (PLOT_WIDTH + GAP), GAP + row * (PLOT_HEIGHT + GAP))
        canvas.paste(Image.fromarray(array), origin)
    return np.asarray(canvas)


def _fit(text, width, draw, font):
    """Shortens ``text`` with a trailing ``..`` until it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "..", font=font) > width:
        text = text[:-1]
    return text + ".."


def sanity_strip(images, maps_per_step, layer_names, scores=None, tile=96):
    """Draws the cascading-randomisation figure of :mod:`explain.sanity`.

    Rows are images; columns are the image, its original map and the map
    after each randomisation step (overlaid on the image), titled with the
    layer randomised last and, when given, the step's mean correlation.

    Args:
        images: ``[B, H, W, 3]`` float pixels in ``[0, 255]``.
        maps_per_step: ``[S + 1, B, H, W]`` maps in ``[0, 1]``, original first.
        layer_names: The ``S`` layer names in the order randomised.
        scores: Optional ``S + 1`` mean Spearman correlations.
        tile: Side of each picture in pixels.

    Returns:
        uint8 ``[H, W, 3]``: ``B`` rows and ``S + 2`` columns under a title row.
    """
    maps_per_step = np.asarray(maps_per_step, dtype=np.float32)
    steps, count = maps_per_step.shape[:2]
    if len(layer_names) != steps - 1 or len(images) != count:
        raise ValueError(
            f"need {steps - 1} layer names and {count} images for maps of shape "
            f"{maps_per_step.shape}, got {len(layer_names)} and {len(images)}"
        )
    font = _font()
    line_height = FONT_SIZE + 3
    header = GAP + line_height * (1 if scores is None else 2)
    columns = steps + 1
    canvas = Image.new(
        "RGB", (columns * (tile + GAP) + GAP, header + count * (tile + GAP) + GAP), _BACKGROUND
    )
    draw = ImageDraw.Draw(canvas)
    titles = ["image", "original", *layer_names]
    for column, title in enumerate(titles):
        x = GAP + column * (tile + GAP)
        draw.text((x, GAP), _fit(str(title), tile, draw, font), fill=_TEXT, font=font)
        if scores is not None and column > 0:
            draw.text((x, GAP + line_height), f"r = {scores[column - 1]:.2f}", fill=_TEXT, font=font)
    for row in range(count):
        y = header + row * (tile + GAP)
        pictures = [to_uint8(images[row])] + [overlay(images[row], m[row]) for m in maps_per_step]
        for column, picture in enumerate(pictures):
            resized = Image.fromarray(picture).resize((tile, tile), Image.NEAREST)
            canvas.paste(resized, (GAP + column * (tile + GAP), y))
    return np.asarray(canvas)
