"""explain.render: colour map, overlay, panels, grids and PNG files."""

import numpy as np
from PIL import Image

from explain import render


def test_jet_endpoints_and_middle():
    colours = render.jet(np.array([0.0, 0.5, 1.0]))
    assert colours.dtype == np.uint8 and colours.shape == (3, 3)
    low, mid, high = colours.astype(int)
    assert low[2] > 100 and low[0] == 0  # dark blue
    assert mid[1] == 255 and mid[0] > 100 and mid[2] > 100  # green-ish middle
    assert high[0] > 100 and high[2] == 0  # dark red


def test_overlay_blends_image_and_heatmap():
    image = np.full((4, 4, 3), 200.0, np.float32)
    heatmap = np.zeros((4, 4), np.float32)
    heatmap[0, 0] = 1.0
    blended = render.overlay(image, heatmap, alpha=0.5).astype(int)
    expected_hot = (0.5 * 200 + 0.5 * render.jet(1.0).astype(float)).round().astype(int)
    assert np.abs(blended[0, 0] - expected_hot).max() <= 1
    assert blended[0, 0, 0] > blended[3, 3, 0]  # red where the map is hot


def test_to_uint8_handles_grayscale_and_range():
    gray = render.to_uint8(np.array([[[-5.0], [300.0]]]))
    assert gray.shape == (1, 2, 3) and gray[0, 0].tolist() == [0, 0, 0] and gray[0, 1].tolist() == [255] * 3


def test_panel_layout_title_and_box():
    image = np.zeros((56, 56, 3), np.float32)
    heatmap = np.zeros((56, 56), np.float32)
    heatmap[10, 40] = 1.0
    titled = render.panel(
        image, heatmap, "goldfish, Carassius auratus", "tabby, tabby cat", 0.873, box=(5, 5, 20, 20)
    )
    plain = render.panel(image, heatmap)
    assert titled.dtype == np.uint8 and titled.shape[1] == 3 * render.TILE + 4 * render.GAP
    # Two title lines make the panel taller than an untitled one.
    assert titled.shape[0] > plain.shape[0]
    header = titled[: titled.shape[0] - render.TILE - render.GAP]
    # Text was drawn: the header holds the wrong-prediction colour's pixels.
    assert (np.abs(header.astype(int) - np.array(render._WRONG)).sum(axis=-1) < 60).any()
    # The green box is drawn on the original tile.
    original = titled[header.shape[0] :, render.GAP : render.GAP + render.TILE]
    assert (original == np.array(render._BOX, np.uint8)).all(axis=-1).any()


def test_short_name():
    assert render.short_name("goldfish, Carassius auratus") == "goldfish"
    assert render.short_name("red square") == "red square"


def test_grid_and_png_roundtrip(tmp_path):
    panels = [np.full((10, 20, 3), v, np.uint8) for v in (50, 100, 150)]
    canvas = render.grid(panels, columns=2)
    assert canvas.shape == (20, 40, 3)
    assert canvas[0, 0, 0] == 50 and canvas[0, 20, 0] == 100 and canvas[10, 0, 0] == 150
    path = str(tmp_path / "sub" / "grid.png")
    render.save_png(canvas, path)
    assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), canvas)
