"""RandAugment, random erasing and flip: each op's values, per-image draws, determinism, host == device."""

import math

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps
from scipy import ndimage

from tests import tiers
from tests.trainer import helpers
from trainer import augment
from trainer import randaugment as ra

SEED = tf.constant([7, 11], tf.int64)
# Every op but auto_contrast has a neutral argument, which magnitude 0 gives.
NEUTRAL_AT_ZERO = ("identity", *(name for name in ra.COLOUR_OPS if name != "auto_contrast"))


def _random_images(batch=6, size=32, seed=0):
    return tf.constant(np.random.default_rng(seed).uniform(0, 255, (batch, size, size, 3)), tf.float32)


def _integer_images(batch=4, size=24, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3)).astype(np.float32)


def _blob(x0, y0, size=64):
    """A Gaussian bump on the fill grey, so resampling's fill adds no weight to the centroid."""
    ys, xs = np.mgrid[:size, :size]
    bump = 100.0 * np.exp(-((xs - x0) ** 2 + (ys - y0) ** 2) / (2 * 2.0**2))
    return np.repeat((ra.FILL_VALUE + bump)[..., None], 3, axis=-1).astype(np.float32)


def _centroid(image):
    weights = image[..., 0] - ra.FILL_VALUE
    ys, xs = np.mgrid[: image.shape[0], : image.shape[1]]
    return (weights * xs).sum() / weights.sum(), (weights * ys).sum() / weights.sum()


# --- One op at a time ---


def test_op_arguments_are_timms_ranges():
    sign = tf.constant([1.0, -1.0])
    expected = {  # timm auto_augment.py, *_level_to_arg at level m / 10, "increasing" forms.
        9: {"rotate": 27.0, "shear_x": 0.27, "translate_y": 0.405, "posterize": 5, "solarize": 26},
        10: {"rotate": 30.0, "shear_y": 0.3, "translate_x": 0.45, "posterize": 4, "solarize": 0},
        0: {"rotate": 0.0, "shear_x": 0.0, "translate_x": 0.0, "posterize": 8, "solarize": 256},
    }
    for magnitude, values in expected.items():
        for name, value in values.items():
            got = ra.op_argument(name, magnitude, sign).numpy()
            signed = name not in ("posterize", "solarize")
            np.testing.assert_allclose(got, [value, -value] if signed else [value, value], rtol=1e-6)
        for name in ("color", "contrast", "brightness", "sharpness"):
            factor = ra.op_argument(name, magnitude, sign).numpy()
            np.testing.assert_allclose(
                factor, [1 + 0.09 * magnitude, max(0.1, 1 - 0.09 * magnitude)], rtol=1e-6
            )


@pytest.mark.parametrize("op", [ra.color, ra.contrast, ra.brightness, ra.sharpness, ra.auto_contrast])
def test_colour_ops_keep_an_empty_batch_empty(op):
    """_by_group hands an op no image when none drew it; oneDNN's depthwise convolution (on by default
    on AVX-512 CPUs) once gave sharpness a wrong shape there."""
    images = _random_images(batch=0)
    out = op(images, tf.ones([0])) if op is not ra.auto_contrast else op(images)
    assert out.shape == (0, 32, 32, 3)


def test_neutral_arguments_and_magnitude_zero_return_the_image_exactly():
    images = _random_images()
    ones = tf.ones([6])
    for op in (ra.color, ra.contrast, ra.brightness, ra.sharpness):
        np.testing.assert_array_equal(op(images, ones).numpy(), images.numpy(), err_msg=op.__name__)
    np.testing.assert_array_equal(ra.posterize(images, tf.fill([6], 8.0)).numpy(), images.numpy())
    np.testing.assert_array_equal(ra.solarize(images, tf.fill([6], 256.0)).numpy(), images.numpy())
    out = ra.rand_augment(images, SEED, 3, 0, probability=1.0, ops=NEUTRAL_AT_ZERO)
    np.testing.assert_array_equal(out.numpy(), images.numpy())
    # Geometric ops at magnitude 0 resample through the identity map: the same pixels.
    out = ra.rand_augment(images, SEED, 2, 0, probability=1.0, ops=ra.GEOMETRIC_OPS)
    np.testing.assert_allclose(out.numpy(), images.numpy(), atol=1e-3)


def test_solarize_inverts_exactly_the_values_at_or_above_the_threshold():
    ramp = np.broadcast_to(np.arange(256, dtype=np.float32).reshape(16, 16, 1), (16, 16, 3))
    images = np.stack([ramp, ramp, ramp])
    out = ra.solarize(images, tf.constant([26.0, 128.0, 0.0])).numpy()
    for image, threshold in zip(out, (26, 128, 0), strict=True):
        values = image[..., 0].ravel()
        np.testing.assert_array_equal(
            values, np.where(np.arange(256) >= threshold, 255 - np.arange(256), values)
        )
        np.testing.assert_array_equal(values[:threshold], np.arange(threshold))


def test_posterize_clears_the_low_bits():
    images = _integer_images(batch=3)
    out = ra.posterize(images, tf.constant([5.0, 4.0, 1.0])).numpy().astype(np.int64)
    for image, source, bits in zip(out, images.astype(np.int64), (5, 4, 1), strict=True):
        low = (1 << (8 - bits)) - 1
        assert not (image & low).any()
        np.testing.assert_array_equal(image, source & ~low)


def test_auto_contrast_stretches_each_channel_and_leaves_flat_channels():
    rng = np.random.default_rng(3)
    image = np.stack(
        [rng.uniform(50, 100, (16, 16)), rng.uniform(0, 255, (16, 16)), np.full((16, 16), 77.0)], -1
    )
    out = ra.auto_contrast(image[None].astype(np.float32)).numpy()[0]
    for channel in (0, 1):
        assert out[..., channel].min() == pytest.approx(0.0, abs=1e-3)
        assert out[..., channel].max() == pytest.approx(255.0, abs=1e-3)
        np.testing.assert_allclose(
            np.corrcoef(out[..., channel].ravel(), image[..., channel].ravel())[0, 1], 1.0
        )
    np.testing.assert_array_equal(out[..., 2], 77.0)


@pytest.mark.parametrize("name", ra.COLOUR_OPS)
def test_colour_ops_match_pil_which_timm_calls(name):
    images = _integer_images(batch=4)
    arguments = {"posterize": [4, 5, 6, 7], "solarize": [26, 100, 200, 255]}.get(name, [0.1, 0.55, 1.45, 1.9])
    op = getattr(ra, name)
    out = (op(images) if name == "auto_contrast" else op(images, tf.constant(arguments, tf.float32))).numpy()
    for image, source, argument in zip(out, images, arguments, strict=True):
        pil = Image.fromarray(source.astype(np.uint8))
        if name == "auto_contrast":
            expected = ImageOps.autocontrast(pil)
        elif name == "posterize":
            expected = ImageOps.posterize(pil, argument)
        elif name == "solarize":
            expected = ImageOps.solarize(pil, argument)
        else:
            expected = getattr(ImageEnhance, name.capitalize())(pil).enhance(argument)
        # PIL rounds every intermediate to uint8; posterize and solarize are exact.
        atol = 0 if name in ("posterize", "solarize") else 2
        np.testing.assert_allclose(image, np.asarray(expected, np.float32), atol=atol, err_msg=name)


def test_rotate_by_90_degrees_is_np_rot90():
    images = _random_images(batch=2, size=16)
    out = ra.rotate(images, tf.constant([90.0, -90.0])).numpy()
    np.testing.assert_allclose(out[0], np.rot90(images.numpy()[0]), atol=1e-3)  # counter-clockwise
    np.testing.assert_allclose(out[1], np.rot90(images.numpy()[1], k=-1), atol=1e-3)


@pytest.mark.parametrize(
    "name,argument,expected",
    [
        (
            "rotate",
            27.0,
            lambda dx, dy, a: (math.cos(a) * dx + math.sin(a) * dy, -math.sin(a) * dx + math.cos(a) * dy),
        ),
        ("shear_x", 0.27, lambda dx, dy, a: (dx + a * dy, dy)),
        ("shear_y", -0.27, lambda dx, dy, a: (dx, dy + a * dx)),
        ("translate_x", 0.2, lambda dx, dy, a: (dx + a * 64, dy)),
        ("translate_y", -0.2, lambda dx, dy, a: (dx, dy + a * 64)),
    ],
)
def test_geometric_op_moves_a_blob_where_it_claims(name, argument, expected):
    x0, y0 = 40.0, 24.0
    out = getattr(ra, name)(_blob(x0, y0)[None], tf.constant([argument])).numpy()[0]
    centre = 31.5
    a = math.radians(argument) if name == "rotate" else argument
    dx, dy = expected(x0 - centre, y0 - centre, a)
    np.testing.assert_allclose(_centroid(out), (centre + dx, centre + dy), atol=0.1)


def test_single_rotate_op_matches_a_scipy_rotation_by_the_drawn_angle():
    images = _random_images(batch=8, size=64)
    out = ra.rand_augment(images, SEED, 1, 9, probability=1.0, ops=("rotate",)).numpy()
    signs = ra.sample_rand_augment(8, SEED, 1, 1.0, 1)["sign"].numpy()[:, 0]
    assert 0 < (signs > 0).sum() < 8
    centre = 31.5
    ys, xs = np.mgrid[:64, :64]
    disk = (xs - centre) ** 2 + (ys - centre) ** 2 < 25**2  # Reads no pixel from outside the image.
    for image, source, sign in zip(out, images.numpy(), signs, strict=True):
        a = math.radians(27.0 * sign)
        # Output (row, col) reads input centre + [[c, s], [-s, c]] @ ((row, col) - centre).
        matrix = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
        offset = centre - matrix @ [centre, centre]
        for channel in range(3):
            reference = ndimage.affine_transform(source[..., channel], matrix, offset, order=1)
            np.testing.assert_allclose(image[..., channel][disk], reference[disk], atol=1e-2)


def test_two_geometric_ops_compose_into_one_map():
    # Two translations of +-0.09 of the side: the blob moves by the sum of the drawn signs.
    batch = 16
    out = ra.rand_augment(
        np.repeat(_blob(31.5, 31.5)[None], batch, 0), SEED, 2, 2, probability=1.0, ops=("translate_x",)
    )
    signs = ra.sample_rand_augment(batch, SEED, 2, 1.0, 1)["sign"].numpy()
    for image, sign in zip(out.numpy(), signs, strict=True):
        np.testing.assert_allclose(_centroid(image), (31.5 + sign.sum() * 0.09 * 64, 31.5), atol=0.1)
    assert len({tuple(s) for s in signs}) > 2


# --- RandAugment over a batch ---


def test_each_image_draws_its_own_ops_and_skipped_images_are_untouched():
    batch = 48
    images = np.repeat(_random_images(batch=1, size=32).numpy(), batch, 0)
    out = ra.rand_augment(images, SEED, 2, 9).numpy()
    draws = {k: v.numpy() for k, v in ra.sample_rand_augment(batch, SEED, 2).items()}
    assert len({tuple(ops) for ops in draws["op"]}) > 20
    assert len({image.tobytes() for image in out}) > 15  # Batch-wide ops would give 1 or 2.
    assert 0.35 < draws["applied"].mean() < 0.65  # timm applies each drawn op with probability 0.5.
    identity = ra.OPS.index("identity")
    untouched = np.all(~draws["applied"] | (draws["op"] == identity), axis=1)
    assert untouched.any() and not untouched.all()
    for image, skip in zip(out, untouched, strict=True):
        if skip:
            np.testing.assert_array_equal(image, images[0])


def test_same_seed_same_images_other_seed_other_images_and_range():
    images = _random_images(batch=16)
    first = ra.rand_augment(images, SEED, 2, 9).numpy()
    np.testing.assert_array_equal(first, ra.rand_augment(images, SEED, 2, 9).numpy())
    assert not np.array_equal(first, ra.rand_augment(images, tf.constant([7, 12]), 2, 9).numpy())
    strongest = ra.rand_augment(images, SEED, 4, 30, probability=1.0)
    assert strongest.dtype == tf.float32 and strongest.shape == images.shape
    assert float(tf.reduce_min(strongest)) >= 0.0 and float(tf.reduce_max(strongest)) <= 255.0


def test_invalid_rand_augment_arguments_raise():
    images = _random_images(batch=1)
    for kwargs, match in [
        ({"num_ops": 0, "magnitude": 9}, "num_ops"),
        ({"num_ops": 2, "magnitude": 31}, "magnitude"),
        ({"num_ops": 2, "magnitude": 9, "ops": ("invert",)}, "ops"),
        ({"num_ops": 2, "magnitude": 9, "probability": 1.5}, "probability"),
    ]:
        with pytest.raises(ValueError, match=match):
            ra.rand_augment(images, SEED, **kwargs)


# --- Random erasing and flip ---


def test_random_erasing_with_probability_zero_is_identity():
    images = _random_images()
    np.testing.assert_array_equal(ra.random_erasing(images, SEED, 0.0).numpy(), images.numpy())


def test_random_erasing_erases_one_rectangle_per_image_within_timms_ranges():
    batch, size = 64, 64
    images = np.full((batch, size, size, 3), 0.5, np.float32)  # The noise is integers: every value changes.
    out = ra.random_erasing(images, SEED, 1.0).numpy()
    aspects = []
    for image, source in zip(out, images, strict=True):
        changed = np.any(image != source, axis=-1)
        ys, xs = np.nonzero(changed)
        height, width = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        assert changed.sum() == height * width  # One filled rectangle.
        # Sides are rounded from real values in range: half a pixel of slack on each.
        slack = 0.5 * (height + width + 1)
        assert 0.02 * size * size - slack <= height * width <= size * size / 3 + slack
        if height < size:  # Not clipped.
            assert (height + 0.5) / (width - 0.5) >= 0.3 and (height - 0.5) / (width + 0.5) <= 3.3
        aspects.append(height / width)
        noise = image[changed]
        assert noise.min() >= 0.0 and noise.max() <= 255.0
        np.testing.assert_array_equal(noise, np.round(noise))
    assert min(aspects) < 0.6 and max(aspects) > 1.6
    assert 100 < out[np.any(out != images, axis=-1)].mean() < 155  # Uniform noise, mean 127.5.
    half = ra.random_erasing(images, SEED, 0.5).numpy()
    erased = np.any(half != images, axis=(1, 2, 3))
    np.testing.assert_array_equal(
        erased, ra.sample_erasing(batch, ra.split_seed(SEED, 2)[0], 0.5, size, size)["erase"]
    )
    assert 0.3 < erased.mean() < 0.7


def test_random_flip_mirrors_exactly_the_drawn_images():
    images = _random_images(batch=16)
    out = ra.random_flip(images, SEED).numpy()
    drawn = (ra.uniform(16, SEED, 0.0, 1.0) < 0.5).numpy()
    for image, source, flip in zip(out, images.numpy(), drawn, strict=True):
        np.testing.assert_array_equal(image, source[:, ::-1] if flip else source)
    assert 0 < drawn.sum() < 16


# --- The Augmenter's options ---

MODERN = {"randaugment": (2, 9), "random_erasing": 0.25, "flip": True}


@pytest.mark.parametrize("policy,size", [("crop", 56), ("book", 64), ("none", 64)])
def test_augmenter_with_every_option_keeps_shape_dtype_and_range(policy, size):
    augmenter = augment.Augmenter(policy, **MODERN)
    out = augmenter(_random_images(batch=8, size=64), SEED)
    assert out.dtype == tf.float32 and out.shape == (8, size, size, 3)
    assert float(tf.reduce_min(out)) >= 0.0 and float(tf.reduce_max(out)) <= 255.0
    assert not augmenter.xla_compatible
    assert repr(augmenter) == (
        f"Augmenter(policy={policy!r}, image_size=64, crop_size=56, "
        "randaugment=(2, 9), random_erasing=0.25, flip=True)"
    )


def test_options_draw_from_seeds_of_their_own():
    images = _random_images(batch=16, size=64)
    crop = augment.Augmenter("crop")(images, SEED).numpy()
    flipped = augment.Augmenter("crop", flip=True)(images, SEED).numpy()
    for image, base in zip(flipped, crop, strict=True):  # The crop's draws are unchanged.
        assert np.array_equal(image, base) or np.array_equal(image, base[:, ::-1])
    assert not np.array_equal(flipped, crop)
    erased = augment.Augmenter("crop", flip=True, random_erasing=1.0)(images, SEED).numpy()
    erased_unflipped = augment.Augmenter("crop", random_erasing=1.0)(images, SEED).numpy()
    # Turning flip on moves no rectangle, and erasing changes no flip.
    mask = np.any(erased != flipped, axis=-1)
    np.testing.assert_array_equal(mask, np.any(erased_unflipped != crop, axis=-1))
    np.testing.assert_array_equal(np.where(mask[..., None], 0, erased), np.where(mask[..., None], 0, flipped))
    # RandAugment on or off: the same rectangles hold the same noise.
    with_ra = augment.Augmenter("crop", randaugment=(2, 9), random_erasing=1.0)(images, SEED).numpy()
    mask = np.any(erased_unflipped != crop, axis=-1)
    np.testing.assert_array_equal(with_ra[mask], erased_unflipped[mask])
    assert not np.array_equal(with_ra[~mask], erased_unflipped[~mask])
    # book flips already: flip=True adds nothing.
    book = augment.Augmenter("book")(images, SEED).numpy()
    np.testing.assert_array_equal(augment.Augmenter("book", flip=True)(images, SEED).numpy(), book)


def test_invalid_options_raise_and_echo_the_value():
    for kwargs, match in [
        ({"randaugment": (0, 9)}, r"num_ops.*0"),
        ({"randaugment": (2, 31)}, r"magnitude.*31"),
        ({"randaugment": (2, -1)}, r"magnitude.*-1"),
        ({"randaugment": "2,9"}, r"randaugment.*'2,9'"),
        ({"randaugment": (2,)}, r"randaugment.*\(2,\)"),
        ({"random_erasing": 1.5}, r"random_erasing.*1\.5"),
        ({"random_erasing": -0.1}, r"random_erasing.*-0\.1"),
    ]:
        with pytest.raises(ValueError, match=match):
            augment.Augmenter("crop", **kwargs)


def test_flip_and_erasing_run_under_xla():
    augmenter = augment.Augmenter("crop", flip=True, random_erasing=0.5)
    assert augmenter.xla_compatible
    images = _random_images(batch=8, size=64)
    np.testing.assert_allclose(
        tf.function(augmenter, jit_compile=True)(images, SEED).numpy(),
        augmenter(images, SEED).numpy(),
        atol=1e-3,
    )


@tiers.dev("traces every augmentation op on host and device: seconds")
def test_host_and_device_give_the_same_output():
    # book's own part is checked in test_augment.py; the options run the same code after any policy.
    images = _random_images(batch=8, size=64)
    augmenter = augment.Augmenter("crop", **MODERN)
    seed = tf.constant([3, 5], tf.int32)
    host = tf.data.Dataset.from_tensors(images).map(lambda x: augmenter(x, seed), num_parallel_calls=2)

    @tf.function
    def train_step(batch, step_seed):
        return augmenter(batch, step_seed)

    np.testing.assert_array_equal(next(iter(host)).numpy(), train_step(images, seed).numpy())
    np.testing.assert_array_equal(augmenter(images, seed).numpy(), train_step(images, seed).numpy())


_MIRRORED = """
import sys
import numpy as np
import tensorflow as tf
from trainer import augment, distribute

distribute.configure_devices(2)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
augmenter = augment.Augmenter("crop", randaugment=(2, 9), random_erasing=0.25, flip=True)
images = tf.constant(np.random.default_rng(0).uniform(0, 255, (2, 8, 64, 64, 3)), tf.float32)

@tf.function
def step():
    def replica_fn():
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        return augmenter(tf.gather(images, replica), tf.stack([3, 5 + replica]))
    return strategy.run(replica_fn)

device = np.stack([v.numpy() for v in strategy.experimental_local_results(step())])
host = np.stack([
    next(iter(tf.data.Dataset.from_tensors(images[r]).map(lambda x, r=r: augmenter(x, tf.stack([3, 5 + r])))))
    for r in range(2)
])
np.savez(sys.argv[1], device=device, host=host)
"""


@tiers.long("a mirrored step on two logical devices in a fresh interpreter")
def test_mirrored_replicas_augment_like_the_host(tmp_path):
    path = str(tmp_path / "out.npz")
    proc = helpers.run_script(_MIRRORED, path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = np.load(path)
    assert out["device"].shape == (2, 8, 56, 56, 3)
    np.testing.assert_array_equal(out["device"], out["host"])
    assert not np.array_equal(out["device"][0], out["device"][1])
