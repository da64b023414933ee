"""explain.callback: GradCamCallback during a real model.fit, its scores and shortcut alarm,
ShortcutWatch, probe_batch and from_dataset."""

import dataclasses
import json
import logging
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from contracts import dataset as data
from contracts import model as model_contract
from explain import callback, gradcam, render
from tests import events
from tests.explain import NUM_CLASSES, tiny_cnn


@pytest.fixture(scope="module")
def train_data():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, size=(16, 64, 64, 3)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, size=16)
    return images, {"predictions": labels, "aux1_predictions": labels}


def _two_output_model():
    keras.utils.set_random_seed(0)
    model = tiny_cnn(64, aux=True)
    loss = "sparse_categorical_crossentropy"
    model.compile(keras.optimizers.Adam(0.05), loss={"predictions": loss, "aux1_predictions": loss})
    return model


def _written_images(logdir):
    """Returns ``{tag: {step: uint8 image}}`` of the image summaries in ``logdir``."""
    # An image summary's tensor is [width, height, png...].
    found = events.read_events(logdir, "images")
    return {
        tag: {step: tf.io.decode_png(t[2]).numpy() for step, t in steps.items()}
        for tag, steps in found.items()
    }


def _expected_grid(model, images, labels, boxes, names):
    """The grid of panels of ``model``'s Grad-CAM maps, titled as the callback titles them."""
    probabilities = np.asarray(model(images, training=False))
    maps = gradcam.Explainer(model)(images, labels)
    panels = []
    for image, heatmap, label, probs, box in zip(images, maps, labels, probabilities, boxes, strict=True):
        guess = int(probs.argmax())
        panels.append(
            render.panel(
                image, heatmap, names[label], names[guess], probs[guess], None if box[0] < 0 else box
            )
        )
    return render.grid(panels, columns=2)


def test_callback_explains_the_main_output_view_every_n_epochs(sample_info, train_data, tmp_path):
    images, labels, boxes = callback.probe_batch(sample_info, policy="none", crop_size=56, max_images=4)
    model = _two_output_model()
    main = model_contract.main_output_model(model)
    logdir = str(tmp_path / "gradcam")
    probe = callback.GradCamCallback(
        main, images, labels, sample_info.class_names, logdir, every_n_epochs=2, max_images=3, boxes=boxes
    )
    model.fit(*train_data, epochs=5, batch_size=8, verbose=0, callbacks=[probe])

    written = _written_images(logdir)
    # Epochs 2 and 4, then the last epoch (5) at the end of training.
    assert {tag: sorted(steps) for tag, steps in written.items()} == {callback.TAG: [2, 4, 5]}
    # The last grid is the handed view's explanation of the first 3 probe images
    # with the trained weights it shares with the two-output model.
    expected = _expected_grid(main, images[:3], labels[:3], boxes[:3], sample_info.class_names)
    np.testing.assert_array_equal(written[callback.TAG][5], expected)
    # Training moved the weights between the writes: the callback reads the live model.
    assert not np.array_equal(written[callback.TAG][2], written[callback.TAG][5])


def test_callback_explains_its_own_model_not_the_trained_one(sample_info, train_data, tmp_path):
    images, labels, _ = callback.probe_batch(sample_info, policy="none", crop_size=56, max_images=2)
    keras.utils.set_random_seed(1)
    frozen = tiny_cnn(64)  # shares nothing with the model being trained
    logdir = str(tmp_path / "gradcam")
    probe = callback.GradCamCallback(
        frozen, images, labels, sample_info.class_names, logdir, every_n_epochs=1
    )
    _two_output_model().fit(*train_data, epochs=2, batch_size=8, verbose=0, callbacks=[probe])
    written = _written_images(logdir)[callback.TAG]
    expected = _expected_grid(frozen, images, labels, np.full((2, 4), -1), sample_info.class_names)
    assert sorted(written) == [1, 2]
    for grid in written.values():
        np.testing.assert_array_equal(grid, expected)


def test_callback_failure_never_stops_training(sample_info, train_data, tmp_path, caplog):
    images, labels, _ = callback.probe_batch(sample_info, policy="none", crop_size=56, max_images=2)
    model = _two_output_model()
    logdir = str(tmp_path / "gradcam")
    probe = callback.GradCamCallback(
        model_contract.main_output_model(model), images, labels, sample_info.class_names, logdir, layer="nope"
    )
    with caplog.at_level(logging.WARNING, logger=callback.__name__):
        history = model.fit(*train_data, epochs=2, batch_size=8, verbose=0, callbacks=[probe])
    assert len(history.history["loss"]) == 2
    assert "Unknown layer 'nope'" in caplog.text
    assert _written_images(logdir) == {}


def test_every_n_epochs_must_be_positive(sample_info):
    with pytest.raises(ValueError, match="every_n_epochs must be >= 1, got 0"):
        callback.GradCamCallback(tiny_cnn(64), np.zeros((1, 64, 64, 3)), [0], sample_info.class_names, "x", 0)


def test_probe_batch_applies_the_eval_crop(sample_info):
    full, labels, boxes = callback.probe_batch(sample_info, policy="none", crop_size=56, max_images=8)
    cropped, cropped_labels, cropped_boxes = callback.probe_batch(
        sample_info, policy="crop", crop_size=56, max_images=8
    )
    assert full.shape == (8, 64, 64, 3) and cropped.shape == (8, 56, 56, 3)
    # The first images of the first evaluation split, centre-cropped by (64 - 56) / 2 = 4 pixels.
    np.testing.assert_array_equal(cropped, full[:, 4:60, 4:60])
    np.testing.assert_array_equal(cropped_labels, labels)
    first = next(
        data.make_dataset(sample_info, "valid", global_batch_size=8, features="all").as_numpy_iterator()
    )
    np.testing.assert_array_equal(labels, first["label"])
    boxed = boxes[:, 0] >= 0
    assert boxed.any()
    np.testing.assert_array_equal(cropped_boxes[boxed], np.clip(boxes[boxed] - 4, 0, 55))


def test_from_dataset_builds_a_callback_on_the_valid_split(sample_info, tmp_path):
    model = tiny_cnn(56)
    made = callback.from_dataset(
        model, sample_info, policy="crop", crop_size=56, log_dir=str(tmp_path), max_images=6
    )
    assert isinstance(made, callback.GradCamCallback) and made.explained is model
    assert made.logdir == os.path.join(str(tmp_path), "gradcam")
    # The panels show 6; every image of the probe set (the 20 of valid, fewer than 64) is scored.
    assert made.max_images == 6 and made.every_n_epochs == 5 and len(made.images) == 20
    images, labels, boxes = callback.probe_batch(
        sample_info, policy="crop", crop_size=56, max_images=callback.PROBE_IMAGES
    )
    np.testing.assert_array_equal(made.images, images)
    np.testing.assert_array_equal(made.labels, labels)
    np.testing.assert_array_equal(made.boxes, boxes)
    assert made.class_names == list(sample_info.class_names)


def test_from_dataset_falls_back_to_the_train_split(sample_info, tmp_path):
    train_only = dataclasses.replace(
        sample_info, split_counts={"train": sample_info.split_counts["train"], "valid": 0}
    )
    made = callback.from_dataset(tiny_cnn(64), train_only, policy="none", crop_size=56, log_dir=str(tmp_path))
    first = next(
        data.make_dataset(
            sample_info, "train", global_batch_size=callback.PROBE_IMAGES, features="all"
        ).as_numpy_iterator()
    )
    np.testing.assert_array_equal(made.images, first["image"])


def test_from_dataset_without_images_is_a_no_op_with_a_warning(sample_info, tmp_path, caplog):
    empty = dataclasses.replace(sample_info, split_counts={"train": 0, "valid": 0, "test": 0})
    with caplog.at_level(logging.WARNING, logger=callback.__name__):
        made = callback.from_dataset(tiny_cnn(64), empty, policy="none", crop_size=56, log_dir=str(tmp_path))
    assert type(made) is keras.callbacks.Callback
    assert "Grad-CAM callback disabled" in caplog.text and sample_info.data_dir in caplog.text
    assert os.listdir(tmp_path) == []


def _probe(watch, scores):
    """Feeds ``(epoch, val_accuracy, pointing_game, center_baseline)`` probes; returns the alarm epochs."""
    return [epoch for epoch, *values in scores if watch.add(epoch, *values)]


def test_shortcut_alarm_after_k_probes_of_rising_accuracy_off_the_objects():
    watch = callback.ShortcutWatch(probes=3, chance=0.2)
    probes = [
        (4, 0.3, 0.5, 0.4),
        (9, 0.4, 0.3, 0.4),
        (14, 0.5, 0.2, 0.4),
        (19, 0.6, 0.4, 0.4),
        (24, 0.7, 0.1, 0.4),
    ]
    # Off the objects from epoch 9 on (at the baseline counts), more accurate than epoch 4's 0.3 since.
    assert _probe(watch, probes) == [19]
    summary = watch.summary()
    assert summary == {
        "shortcut_alarm": True,
        "epoch": 19,
        "probes": 5,
        "streak": 3,
        "val_accuracy": 0.6,
        "pointing_game": 0.4,
        "center_baseline": 0.4,
        "energy_in_box": None,
        "pointing_game_skipped": None,
        "pointing_game_uninformative": None,
    }
    json.dumps(summary)  # plain values for metrics.json
    assert watch.message().startswith(
        "shortcut alarm at epoch 19: over 3 Grad-CAM probes the validation accuracy rose (to 0.600) while "
        "the pointing game stayed at or below its centre baseline (now 0.400 against 0.400): "
    )


def test_the_first_probes_are_compared_with_chance():
    assert _probe(
        callback.ShortcutWatch(probes=2, chance=0.25), [(0, 0.3, 0.1, 0.5), (1, 0.5, 0.1, 0.5)]
    ) == [1]
    # Not above chance: no alarm, however far the attention is off the objects.
    assert (
        _probe(callback.ShortcutWatch(probes=2, chance=0.25), [(0, 0.25, 0.0, 0.5), (1, 0.5, 0.0, 0.5)]) == []
    )


def test_no_alarm_when_accuracy_falls():
    watch = callback.ShortcutWatch(probes=2, chance=0.1)
    # On the objects at 0.9; then off them while the accuracy falls.
    probes = [(0, 0.9, 0.6, 0.5), (1, 0.8, 0.1, 0.5), (2, 0.7, 0.1, 0.5), (3, 0.6, 0.1, 0.5)]
    assert _probe(watch, probes) == []
    # Rising at one probe, then back below where the streak began: no alarm either.
    assert _probe(watch, [(4, 0.7, 0.1, 0.5), (5, 0.55, 0.1, 0.5)]) == []
    assert watch.summary()["shortcut_alarm"] is False and watch.summary()["epoch"] is None


def test_no_alarm_while_the_pointing_game_beats_the_centre_baseline():
    watch = callback.ShortcutWatch(probes=2, chance=0.1)
    rising = [(epoch, 0.2 + 0.1 * epoch, 0.41, 0.4) for epoch in range(8)]
    assert _probe(watch, rising) == []
    assert watch.summary()["probes"] == 8 and watch.summary()["pointing_game"] == 0.41


def test_the_streak_resets_and_the_alarm_is_raised_once():
    watch = callback.ShortcutWatch(probes=3, chance=0.1)
    probes = [(0, 0.2, 0.1, 0.5), (1, 0.3, 0.1, 0.5), (2, 0.4, 0.6, 0.5)]  # on the object at epoch 2
    probes += [(3, 0.5, 0.1, 0.5), (4, 0.6, 0.1, 0.5)]  # two of three again: not yet
    assert _probe(watch, probes) == []
    probes = [(5, 0.7, 0.1, 0.5), (6, 0.8, 0.1, 0.5), (7, 0.9, 0.1, 0.5)]
    assert _probe(watch, probes) == [5]
    # A probe without a validation accuracy (no valid split) breaks a streak too.
    other = callback.ShortcutWatch(probes=2, chance=0.1)
    assert _probe(other, [(0, 0.5, 0.1, 0.5), (1, None, 0.1, 0.5), (2, 0.6, 0.1, 0.5)]) == []
    # ...and cannot start one: probe 3's streak would be compared with probe 1.
    assert _probe(other, [(3, 0.7, 0.1, 0.5), (4, 0.8, 0.1, 0.5)]) == [4]


def test_watch_state_survives_a_restart():
    watch = callback.ShortcutWatch(probes=2, chance=0.1)
    _probe(watch, [(0, 0.3, 0.1, 0.5)])
    state = json.loads(json.dumps(watch.get_state()))  # as a backup's state.json holds it
    resumed = callback.ShortcutWatch(probes=2, chance=0.1)
    resumed.load_state(state)
    assert _probe(resumed, [(1, 0.4, 0.1, 0.5)]) == [1]
    with pytest.raises(ValueError, match="probes must be >= 1, got 0"):
        callback.ShortcutWatch(probes=0)


def test_callback_scores_the_probe_set_into_the_logs_and_raises_the_alarm(sample_info, tmp_path):
    images, labels, _ = callback.probe_batch(sample_info, policy="none", crop_size=56, max_images=12)
    # Boxes around the centre (a quarter of the image): the centre baseline always hits, so the
    # pointing game is at or below it whatever the maps look like.
    boxes = np.tile([16, 16, 47, 47], (len(images), 1))
    keras.utils.set_random_seed(2)
    messages = []
    probe = callback.GradCamCallback(
        tiny_cnn(64),
        images,
        labels,
        sample_info.class_names,
        str(tmp_path / "gradcam"),
        every_n_epochs=2,
        max_images=4,
        boxes=boxes,
        watch=callback.ShortcutWatch(probes=2, chance=0.2),
        log=messages.append,
    )
    epoch_logs = []
    for epoch, accuracy in enumerate([0.3, 0.1, 0.4, 0.2, 0.5, 0.6]):
        logs = {"val_accuracy": accuracy}
        probe.on_epoch_end(epoch, logs)
        epoch_logs.append(logs)
    probe.on_train_end()
    # Probes after epochs 1, 3 and 5 (0-based): accuracies 0.1, 0.2, 0.6.
    assert [sorted(logs) for logs in epoch_logs[::2]] == [["val_accuracy"]] * 3
    for logs in epoch_logs[1::2]:
        assert set(logs) == {"val_accuracy", *callback.SCORES}
        assert logs["gradcam_pointing_game_center_baseline"] == 1.0
        assert 0.0 <= logs["gradcam_pointing_game"] <= 1.0
        # An all-zero map (nothing supports the class) has no energy anywhere.
        assert 0.0 <= logs["gradcam_energy_in_box"] <= 1.0
    assert [entry["epoch"] for entry in probe.watch.history] == [1, 3, 5]
    # 0.1 is below chance; after it, 0.2 and 0.6 both beat 0.1: the alarm at epoch 5, once.
    assert probe.watch.summary()["epoch"] == 5 and messages == [probe.watch.message()]
    texts = events.read_events(str(tmp_path / "gradcam"), "text")
    assert list(texts) == [callback.ALARM_TAG] and list(texts[callback.ALARM_TAG]) == [6]
    assert texts[callback.ALARM_TAG][6].item().decode() == messages[0]
    assert sorted(_written_images(str(tmp_path / "gradcam"))[callback.TAG]) == [2, 4, 6]
    # The watch travels with the callback's state (a trainer backup).
    restored = callback.GradCamCallback(
        tiny_cnn(64), images, labels, sample_info.class_names, str(tmp_path / "other"), boxes=boxes
    )
    restored.set_state(json.loads(json.dumps(probe.get_state())))
    assert restored.watch.summary()["epoch"] == 5 and restored.watch.summary()["probes"] == 3
