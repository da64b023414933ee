"""Augmentation: shapes, ranges, each transform within its bounds, determinism, host == device."""

import dataclasses
import glob
import math

import numpy as np
import pytest
import tensorflow as tf

from contracts import policy as policy_lib
from tests import events, tiers
from trainer import augment, augment_summary

SEED = tf.constant([7, 11], tf.int64)
IDENTITY = augment.BookParams.identity()


def _only(**changes):
    return augment.Augmenter("book", book_params=dataclasses.replace(IDENTITY, **changes))


def _params(batch, **changes):
    params = dataclasses.replace(IDENTITY, **changes)
    return {k: v.numpy() for k, v in augment.sample_book_parameters(batch, SEED, params).items()}


def _random_images(batch=6, size=64, seed=0):
    return tf.constant(np.random.default_rng(seed).uniform(0, 255, (batch, size, size, 3)), tf.float32)


def _centroid(image):
    weights = image[..., 0]
    ys, xs = np.mgrid[: image.shape[0], : image.shape[1]]
    return (weights * xs).sum() / weights.sum(), (weights * ys).sum() / weights.sum()


@pytest.mark.parametrize("policy,size", [("book", 64), ("crop", 56), ("none", 64)])
def test_shapes_dtypes_and_range(policy, size):
    images = _random_images()
    augmenter = augment.Augmenter(policy)
    out = augmenter(images, SEED)
    assert out.dtype == tf.float32
    assert out.shape == (6, size, size, 3)
    assert augmenter.output_size == policy_lib.output_size(policy) == size
    assert float(tf.reduce_min(out)) >= 0.0 and float(tf.reduce_max(out)) <= 255.0
    assert augmenter.eval_transform(images).shape == (6, size, size, 3)


def test_book_clips_extreme_images():
    images = tf.fill([8, 64, 64, 3], 255.0)
    out = augment.Augmenter("book")(images, SEED).numpy()
    assert out.max() <= 255.0 and out.min() >= 0.0
    assert (out < 255.0).any()  # Brightness below 1 and occlusions darken some pixels.


def test_policies_change_images_and_none_is_identity():
    images = _random_images()
    for policy in ("book", "crop"):
        out = augment.Augmenter(policy)(images, SEED).numpy()
        reference = policy_lib.eval_transform(policy, images).numpy()
        per_image = np.abs(out - reference).mean(axis=(1, 2, 3))
        assert (per_image > 1.0).all(), policy
    np.testing.assert_array_equal(augment.Augmenter("none")(images, SEED).numpy(), images.numpy())


def test_eval_transform_is_centre_crop_or_identity():
    images = _random_images()
    centre = images.numpy()[:, 4:60, 4:60]
    np.testing.assert_array_equal(policy_lib.eval_transform("crop", images).numpy(), centre)
    for policy in ("book", "none"):
        np.testing.assert_array_equal(policy_lib.eval_transform(policy, images).numpy(), images.numpy())
    assert policy_lib.crop_offset("crop") == 4 and policy_lib.crop_offset("book") == 0
    larger = np.random.default_rng(2).uniform(0, 255, (2, 72, 70, 3)).astype(np.float32)
    np.testing.assert_array_equal(policy_lib.eval_transform("crop", larger), larger[:, 8:64, 7:63])
    with pytest.raises(ValueError, match="centre-crop"):
        policy_lib.eval_transform("crop", larger[:, :50])


def test_seeded_runs_repeat_exactly_and_seeds_differ():
    images = _random_images()
    for policy in ("book", "crop"):
        augmenter = augment.Augmenter(policy)
        first, again = augmenter(images, SEED).numpy(), augmenter(images, SEED).numpy()
        other = augmenter(images, tf.constant([7, 12], tf.int64)).numpy()
        np.testing.assert_array_equal(first, again)
        assert not np.array_equal(first, other)


@pytest.mark.parametrize("policy", ["book", "crop"])
@tiers.dev("traces every augmentation on host and device: seconds")
def test_host_and_device_give_the_same_output(policy):
    images = _random_images(batch=4)
    augmenter = augment.Augmenter(policy)
    seed = tf.constant([3, 5], tf.int32)
    host = tf.data.Dataset.from_tensors(images).map(lambda x: augmenter(x, seed), num_parallel_calls=2)
    host_out = next(iter(host)).numpy()

    @tf.function
    def train_step(batch, step_seed):
        return augmenter(batch, step_seed)

    np.testing.assert_array_equal(host_out, train_step(images, seed).numpy())


def test_xla_compiled_step_draws_the_same_parameters():
    # XLA may fuse multiply-adds, so values agree to rounding rather than bit for bit.
    book = augment.BookParams()
    host = augment.sample_book_parameters(64, SEED, book)
    xla = tf.function(lambda: augment.sample_book_parameters(64, SEED, book), jit_compile=True)()
    for key, value in host.items():
        np.testing.assert_allclose(xla[key].numpy(), value.numpy(), rtol=1e-5, atol=1e-5, err_msg=key)
    images = _random_images(batch=4)
    crop = augment.Augmenter("crop")
    assert crop.xla_compatible and not augment.Augmenter("book").xla_compatible
    photometric = _only(brightness_range=(0.5, 1.5), gamma_range=(0.9, 1.08), occlusion_size=10)
    assert photometric.xla_compatible
    np.testing.assert_allclose(
        tf.function(photometric, jit_compile=True)(images, SEED).numpy(),
        photometric(images, SEED).numpy(),
        atol=1e-2,
    )
    np.testing.assert_allclose(
        tf.function(crop, jit_compile=True)(images, SEED).numpy(), crop(images, SEED).numpy(), atol=1e-3
    )


def test_parameters_stay_within_bounds():
    p = {k: v.numpy() for k, v in augment.sample_book_parameters(2000, SEED, augment.BookParams()).items()}
    assert np.abs(p["angle"]).max() <= math.radians(30) + 1e-6
    assert np.abs(p["angle"]).max() > math.radians(28)  # The range is used, not just bounded.
    assert np.abs(p["shear"]).max() <= math.radians(5) + 1e-6
    for key in ("zoom_x", "zoom_y"):
        assert p[key].min() >= 0.8 - 1e-6 and p[key].max() <= 1.2 + 1e-6
    for key in ("shift_x", "shift_y"):
        assert np.abs(p[key]).max() <= 0.2 * 64 + 1e-4
    assert p["brightness"].min() >= 0.5 and p["brightness"].max() <= 1.5
    assert p["gamma"].min() >= 0.9 and p["gamma"].max() <= 1.08
    assert 0.4 < p["flip"].mean() < 0.6
    assert set(np.unique(p["occlusion_value"])) == {0.0, 128.0, 255.0}
    for key in ("occlusion_x", "occlusion_y"):
        assert p[key].min() == 0 and p[key].max() == 64 - 10


def test_rotation_only_keeps_a_line_within_30_degrees():
    image = np.zeros((64, 64, 3), np.float32)
    image[31:33, 17:47] = 255.0  # A horizontal bar centred on the image centre.
    batch = 48
    out = _only(rotation_deg=30.0)(tf.constant(np.repeat(image[None], batch, 0)), SEED).numpy()
    drawn = np.degrees(_params(batch, rotation_deg=30.0)["angle"])
    measured = []
    for rotated in out[..., 0]:
        ys, xs = np.nonzero(rotated > 64)
        weights = rotated[ys, xs]
        cov = np.cov(np.stack([xs, ys]), aweights=weights)
        vx, vy = np.linalg.eigh(cov)[1][:, -1]
        angle = np.degrees(np.arctan2(vy, vx))
        measured.append((angle + 90) % 180 - 90)
    measured = np.array(measured)
    assert np.abs(measured).max() <= 30.0 + 1.5
    assert np.abs(measured).max() > 20.0
    # The transform maps output to input pixels, so content turns by minus the drawn angle.
    np.testing.assert_allclose(measured, -drawn, atol=1.5)


def test_shear_only_tilts_a_vertical_bar_within_5_degrees():
    image = np.zeros((64, 64, 3), np.float32)
    image[12:52, 31:33] = 255.0
    batch = 32
    out = _only(shear_deg=5.0)(tf.constant(np.repeat(image[None], batch, 0)), SEED).numpy()
    drawn = np.degrees(_params(batch, shear_deg=5.0)["shear"])
    tilts = []
    for sheared in out[..., 0]:
        ys, xs = np.nonzero(sheared > 64)
        slope = np.polyfit(ys, xs, 1, w=np.sqrt(sheared[ys, xs]))[0]  # dx/dy of the bar
        tilts.append(np.degrees(np.arctan(slope)))
    tilts = np.array(tilts)
    assert np.abs(tilts).max() <= 5.0 + 0.5 and np.abs(tilts).max() > 3.0
    np.testing.assert_allclose(tilts, drawn, atol=0.5)


def test_shift_only_moves_a_dot_within_20_percent():
    image = np.zeros((64, 64, 3), np.float32)
    image[30:34, 30:34] = 255.0
    batch = 16
    images = tf.constant(np.repeat(image[None], batch, 0))
    out = _only(width_shift=0.2, height_shift=0.2)(images, SEED).numpy()
    drawn = _params(batch, width_shift=0.2, height_shift=0.2)
    for i in range(batch):
        cx, cy = _centroid(out[i])
        # The transform maps output to input pixels, so content moves by minus the shift.
        assert abs((cx - 31.5) + drawn["shift_x"][i]) < 0.3
        assert abs((cy - 31.5) + drawn["shift_y"][i]) < 0.3
        assert abs(cx - 31.5) <= 12.8 + 0.3 and abs(cy - 31.5) <= 12.8 + 0.3


def test_zoom_only_scales_a_square_by_at_most_20_percent():
    image = np.zeros((64, 64, 3), np.float32)
    image[22:42, 22:42] = 255.0
    batch = 16
    out = _only(zoom=0.2)(tf.constant(np.repeat(image[None], batch, 0)), SEED).numpy()
    drawn = _params(batch, zoom=0.2)
    area = out[..., 0].sum(axis=(1, 2)) / 255.0
    expected = 400.0 / (drawn["zoom_x"] * drawn["zoom_y"])
    np.testing.assert_allclose(area, expected, rtol=0.03)
    assert (area >= 400 / 1.44 * 0.97).all() and (area <= 400 / 0.64 * 1.03).all()


def test_flip_only_mirrors_about_half_of_the_images():
    images = _random_images(batch=16)
    out = _only(horizontal_flip=True)(images, SEED).numpy()
    flips = _params(16, horizontal_flip=True)["flip"]
    for i, flipped in enumerate(flips):
        expected = images.numpy()[i, :, ::-1] if flipped else images.numpy()[i]
        np.testing.assert_allclose(out[i], expected, atol=1e-3)
    assert 0 < flips.sum() < 16


def test_brightness_only_scales_each_image_by_one_factor():
    images = _random_images(batch=16) * (150.0 / 255.0) + 1.0  # No clipping at 1.5x.
    out = _only(brightness_range=(0.5, 1.5))(images, SEED).numpy()
    ratio = out / images.numpy()
    per_image = ratio.reshape(16, -1)
    np.testing.assert_allclose(per_image.min(axis=1), per_image.max(axis=1), rtol=1e-4)
    drawn = _params(16, brightness_range=(0.5, 1.5))["brightness"]
    np.testing.assert_allclose(per_image[:, 0], drawn, rtol=1e-4)
    assert per_image.min() >= 0.5 and per_image.max() <= 1.5


def test_gamma_only_stays_within_range():
    images = tf.fill([16, 64, 64, 3], 100.0)
    out = _only(gamma_range=(0.9, 1.08))(images, SEED).numpy()
    gamma = np.log(out[:, 0, 0, 0] / 255.0) / np.log(100.0 / 255.0)
    assert gamma.min() >= 0.9 - 1e-4 and gamma.max() <= 1.08 + 1e-4
    np.testing.assert_allclose(gamma, _params(16, gamma_range=(0.9, 1.08))["gamma"], rtol=1e-4)


def test_one_occlusion_per_image_not_per_batch():
    images = tf.fill([16, 64, 64, 3], 50.0)
    out = _only(occlusion_size=10)(images, SEED).numpy()
    corners = set()
    for occluded in out:
        changed = np.any(occluded != 50.0, axis=-1)
        ys, xs = np.nonzero(changed)
        assert changed.sum() == 100
        assert ys.max() - ys.min() == 9 and xs.max() - xs.min() == 9
        values = np.unique(occluded[changed])
        assert len(values) == 1 and values[0] in (0.0, 128.0, 255.0)
        corners.add((ys.min(), xs.min()))
    assert len(corners) > 8  # Each image draws its own position.


def test_crop_without_contrast_is_an_exact_random_crop():
    images = _random_images(batch=8)
    out = augment.Augmenter("crop", contrast=0.0)(images, SEED).numpy()
    offsets = set()
    for i in range(8):
        matches = [
            (y, x)
            for y in range(9)
            for x in range(9)
            if np.array_equal(out[i], images.numpy()[i, y : y + 56, x : x + 56])
        ]
        assert len(matches) == 1
        offsets.add(matches[0])
    assert len(offsets) > 1


def test_crop_of_larger_images_keeps_seven_eighths_of_them():
    """128-px images: random 112-px crops and the centre 112 (the book's 56/64), not a 56-px corner."""
    images = _random_images(batch=4, size=128)
    augmenter = augment.Augmenter("crop", image_size=128, contrast=0.0)
    assert augmenter.crop_size == augmenter.output_size == policy_lib.output_size("crop", 128) == 112
    out = augmenter(images, SEED).numpy()
    assert out.shape == (4, 112, 112, 3)
    for i in range(4):
        windows = [
            (y, x)
            for y in range(17)
            for x in range(17)
            if np.array_equal(out[i], images.numpy()[i, y : y + 112, x : x + 112])
        ]
        assert len(windows) == 1
    centre = policy_lib.eval_transform("crop", images, image_size=128).numpy()
    np.testing.assert_array_equal(augmenter.eval_transform(images).numpy(), centre)
    np.testing.assert_array_equal(centre, images.numpy()[:, 8:120, 8:120])
    assert policy_lib.crop_offset("crop", 128) == 8
    # An explicit side still wins.
    assert augment.Augmenter("crop", image_size=128, crop_size=56).output_size == 56


def test_random_contrast_scales_around_the_mean_within_30_percent():
    rng = np.random.default_rng(1)
    images = tf.constant(rng.uniform(100, 150, (16, 56, 56, 3)), tf.float32)
    out = augment.random_contrast(images, SEED, 0.3).numpy()
    mean = images.numpy().mean(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(out.mean(axis=(1, 2), keepdims=True), mean, rtol=1e-4)
    centred_in, centred_out = images.numpy() - mean, out - mean
    factor = (centred_in * centred_out).sum(axis=(1, 2, 3)) / (centred_in**2).sum(axis=(1, 2, 3))
    assert factor.min() >= 0.7 - 1e-4 and factor.max() <= 1.3 + 1e-4
    assert factor.max() - factor.min() > 0.1


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="policy"):
        augment.Augmenter("cutmix")
    with pytest.raises(ValueError, match="crop_size"):
        augment.Augmenter("crop", image_size=64, crop_size=80)
    with pytest.raises(ValueError, match="gamma_range"):
        augment.BookParams(gamma_range=(1.2, 1.0))


def test_augmentation_summary_writes_side_by_side_images(tmp_path):
    images = _random_images(batch=10)
    pairs = augment_summary.write_augmentation_summary(
        str(tmp_path), images, augment.Augmenter("crop"), SEED, step=3, max_images=4
    )
    assert pairs.shape == (4, 64, 130, 3)
    np.testing.assert_allclose(pairs.numpy()[:, :, :64], images.numpy()[:4] / 255.0, atol=1e-6)
    assert float(tf.reduce_min(pairs)) >= 0.0 and float(tf.reduce_max(pairs)) <= 1.0
    assert len(glob.glob(str(tmp_path / "events.out.tfevents.*"))) == 1
    found = list(events.summaries(str(tmp_path)))
    assert [entry[:3] for entry in found] == [("augmentation", 3, "images")]
    assert found[0][3].shape == (2 + 4,)  # Width, height, then four encoded PNGs.
