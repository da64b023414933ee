"""contracts.resize: the one resize policy and the box arithmetic that follows the pixels."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts import resize

RED, BLUE = (255, 0, 0), (0, 0, 255)
# A pixel counts as white when it is more white than black: the box's own pixels stay so after
# any policy, and a pixel outside the box gets at most a fraction of white from the filter.
WHITE_THRESHOLD = 127
# (height, width) of sources: landscape, portrait, odd leftovers, upscaling, already square.
ASPECTS = [(240, 320), (320, 240), (128, 134), (375, 500), (200, 90), (30, 40), (100, 100)]


def _two_colours(height=240, width=320, split=80):
    """Red left of column ``split``, blue from it on."""
    image = np.empty((height, width, 3), np.uint8)
    image[:, :split] = RED
    image[:, split:] = BLUE
    return image


def _white_box(height, width, box):
    xmin, ymin, xmax, ymax = box
    image = np.zeros((height, width, 3), np.uint8)
    image[ymin : ymax + 1, xmin : xmax + 1] = 255
    return image


def _white_bbox(pixels):
    """Inclusive ``(xmin, ymin, xmax, ymax)`` of the white pixels, or ``None``."""
    ys, xs = np.nonzero(np.asarray(pixels)[..., 0] > WHITE_THRESHOLD)
    if not len(xs):
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def _red_columns(row):
    return int(np.sum((row[:, 0] > 200) & (row[:, 2] < 55)))


@pytest.mark.parametrize("policy", resize.POLICIES)
def test_an_image_already_square_is_unchanged(policy):
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert np.array_equal(resize.resize(image, 64, policy).numpy(), image)
    # Float input is rounded, as the resized path rounds, not truncated.
    floats = np.full((64, 64, 3), 3.6, np.float32)
    assert np.all(resize.resize(floats, 64, policy).numpy() == 4)
    assert resize.resize_box((1, 2, 30, 40), 64, 64, 64, policy) == (1, 2, 30, 40)


def test_each_policy_on_a_320x240_two_colour_image():
    image = _two_colours()  # Red is the left quarter: columns 0..79 of 320.
    crop, pad, stretch = (resize.resize(image, 64, policy).numpy() for policy in ("crop", "pad", "stretch"))
    for out in (crop, pad, stretch):
        assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    # crop: the centre 240x240 square starts at column 40, so red is 40 of its 240 columns:
    # 10.7 at 64 px, the blended column neither red nor blue. stretch and pad keep the whole
    # width: a quarter, 16.
    assert _red_columns(crop[32]) == 10
    assert _red_columns(stretch[32]) == 16 and _red_columns(pad[32]) == 16
    assert np.array_equal(crop[0], crop[63]) and np.array_equal(stretch[0], stretch[63]), "rows are alike"
    assert np.array_equal(crop[32, 40], BLUE) and np.array_equal(crop[32, 0], RED)
    # pad: 320 -> 64 makes 240 -> 48 rows, centred: 8 black rows above and below.
    assert np.all(pad[:8] == resize.PAD_FILL) and np.all(pad[56:] == resize.PAD_FILL)
    assert np.array_equal(pad[8, 0], RED) and np.array_equal(pad[55, 63], BLUE)


@pytest.mark.parametrize(
    ("height", "width", "before", "after"),
    [(240, 320, 8, 8), (320, 240, 8, 8), (200, 300, 10, 11), (90, 200, 17, 18), (1, 64, 31, 32)],
)
def test_pad_bands_are_black_and_as_wide_as_the_leftover(height, width, before, after):
    out = resize.resize(np.full((height, width, 3), 255, np.uint8), 64, "pad").numpy()
    # Bands run across the short side: rows for a landscape source, columns for a portrait one.
    lines = out[:, :, 0] if width >= height else out[:, :, 0].T
    assert np.all(lines[:before] == resize.PAD_FILL) and np.all(lines[64 - after :] == resize.PAD_FILL)
    assert np.all(lines[before : 64 - after] == 255)
    geometry = resize.geometry(height, width, 64, "pad")
    assert (geometry.top if width >= height else geometry.left) == before


@pytest.mark.parametrize("policy", resize.POLICIES)
@pytest.mark.parametrize(("height", "width"), ASPECTS)
def test_box_moves_with_the_pixels(policy, height, width):
    box = (width // 5, height // 4, width // 2, (3 * height) // 4)
    out = resize.resize(_white_box(height, width, box), 64, policy).numpy()
    moved = resize.resize_box(box, height, width, 64, policy)
    white = _white_bbox(out)
    assert moved is not None and white is not None
    # The box holds every white pixel and is at most one pixel wider on each side (rounded outwards).
    assert moved[0] <= white[0] <= moved[0] + 1 and moved[1] <= white[1] <= moved[1] + 1
    assert moved[2] - 1 <= white[2] <= moved[2] and moved[3] - 1 <= white[3] <= moved[3]


def test_crop_cuts_the_centre_square_first_and_moves_the_box_exactly():
    # 132x128: the centre 128x128 window starts at column 2 and is halved to 64x64.
    assert resize.geometry(128, 132, 64, "crop") == resize.Geometry(0, 2, 128, 128, 64, 64, 0, 0)
    # An odd leftover goes right / below, as tf.image's central crop does.
    assert resize.geometry(128, 131, 64, "crop").window_left == 1
    box = (20, 40, 59, 99)
    out = resize.resize(_white_box(128, 132, box), 64, "crop").numpy()
    assert _white_bbox(out) == resize.resize_box(box, 128, 132, 64, "crop") == (9, 20, 28, 49)


def test_a_box_the_crop_cuts_away_is_none():
    # 320x240: the centre square starts at source column 40; columns 0..30 are cut away.
    assert resize.resize_box((0, 10, 30, 200), 240, 320, 64, "crop") is None
    assert resize.resize_box((0, 10, 30, 200), 240, 320, 64, "pad") is not None
    assert resize.resize_box(None, 240, 320, 64, "crop") is None


def test_compiled_is_the_same_function():
    image = np.random.default_rng(1).integers(0, 256, (75, 131, 3), dtype=np.uint8)
    for policy in resize.POLICIES:
        compiled = resize.compiled(64, policy)
        assert resize.compiled(64, policy) is compiled, "one trace per (size, policy)"
        assert np.array_equal(compiled(image).numpy(), resize.resize(image, 64, policy).numpy())


def test_unknown_policy_names_the_choices():
    with pytest.raises(ValueError, match="one of crop, pad, stretch, got 'squash'"):
        resize.resize(np.zeros((8, 8, 3), np.uint8), 4, "squash")
    with pytest.raises(ValueError, match="got 'squash'"):
        resize.geometry(8, 8, 4, "squash")


@st.composite
def _sources(draw):
    height, width = draw(st.integers(1, 260)), draw(st.integers(1, 260))
    xmin, ymin = draw(st.integers(0, width - 1)), draw(st.integers(0, height - 1))
    xmax, ymax = draw(st.integers(xmin, width - 1)), draw(st.integers(ymin, height - 1))
    return height, width, (xmin, ymin, xmax, ymax)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=_sources(), size=st.sampled_from([16, 64]), policy=st.sampled_from(resize.POLICIES))
def test_resized_box_stays_inside_and_holds_the_white_pixels(source, size, policy):
    height, width, box = source
    moved = resize.resize_box(box, height, width, size, policy)
    white = _white_bbox(resize.compiled(size, policy)(_white_box(height, width, box)))
    if moved is None:
        assert policy == "crop" and white is None, "only the crop cuts a box away, and nothing of it shows"
        return
    xmin, ymin, xmax, ymax = moved
    assert 0 <= xmin <= xmax <= size - 1 and 0 <= ymin <= ymax <= size - 1
    if white is not None:
        assert xmin <= white[0] and ymin <= white[1] and white[2] <= xmax and white[3] <= ymax
