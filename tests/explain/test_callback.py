"""explain.callback: GradCamCallback during a real model.fit, its scores, shortcut alarm and final
check, probe_batch and from_dataset (the alarm's rule itself: tests/explain/test_shortcut.py)."""

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
from tests import events, tiers
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


def _centre_boxed_callback(sample_info, logdir, messages, every_n_epochs, images=12, boxes=True):
    """A tiny CNN's callback on the first ``images`` valid images, boxed around the centre (or unboxed).

    Boxes around the centre (a quarter of the image): the centre baseline always hits (1.0), and
    this seed's untrained maps peak elsewhere, so the pointing game is clearly below it.
    """
    found, labels, _ = callback.probe_batch(sample_info, policy="none", crop_size=56, max_images=images)
    keras.utils.set_random_seed(2)
    return callback.GradCamCallback(
        tiny_cnn(64),
        found,
        labels,
        sample_info.class_names,
        logdir,
        every_n_epochs=every_n_epochs,
        max_images=4,
        boxes=np.tile([16, 16, 47, 47] if boxes else [-1, -1, -1, -1], (len(found), 1)),
        watch=callback.ShortcutWatch(probes=2, chance=0.2),
        log=messages.append,
    )


def _train(probe, accuracies):
    """Ends one epoch per accuracy (as ``val_accuracy``), then training; returns each epoch's logs."""
    epoch_logs = []
    for epoch, accuracy in enumerate(accuracies):
        logs = {"val_accuracy": accuracy}
        probe.on_epoch_end(epoch, logs)
        epoch_logs.append(logs)
    probe.on_train_end()
    return epoch_logs


def _expected_scores(probe):
    """The probe set's scores with the explained model's current weights."""
    maps = gradcam.Explainer(probe.explained)(probe.images, probe.labels)
    scores, _ = callback.score(maps, probe.boxes, probe.labels)
    return scores


@tiers.dev("Grad-CAM of the probe set over several epochs: seconds")
def test_callback_scores_the_probe_set_into_the_logs_and_raises_the_alarm(sample_info, tmp_path):
    messages = []
    logdir = str(tmp_path / "gradcam")
    probe = _centre_boxed_callback(sample_info, logdir, messages, every_n_epochs=2)
    # "High" with chance 0.2: at least 0.6.
    epoch_logs = _train(probe, [0.3, 0.5, 0.4, 0.7, 0.5, 0.9])
    # Probes after epochs 1, 3 and 5 (0-based): accuracies 0.5, 0.7, 0.9.
    assert [sorted(logs) for logs in epoch_logs[::2]] == [["val_accuracy"]] * 3
    for logs in epoch_logs[1::2]:
        assert set(logs) == {"val_accuracy", *callback.SCORES}
        assert logs["gradcam_pointing_game_center_baseline"] == 1.0
        assert logs["gradcam_pointing_game"] <= 0.85  # clearly below: 0.15 short
        # An all-zero map (nothing supports the class) has no energy anywhere.
        assert 0.0 <= logs["gradcam_energy_in_box"] <= 1.0
    assert [entry["epoch"] for entry in probe.watch.history] == [1, 3, 5]
    # 0.5 is not high; 0.7 and 0.9 are: two in a row, the alarm at epoch 5, once.
    summary = probe.watch.summary()
    assert (summary["epoch"], summary["raised_by"]) == (5, "probes") and messages == [probe.watch.message()]
    texts = events.read_events(logdir, "text")
    assert list(texts) == [callback.ALARM_TAG] and list(texts[callback.ALARM_TAG]) == [6]
    assert texts[callback.ALARM_TAG][6].item().decode() == messages[0]
    assert sorted(_written_images(logdir)[callback.TAG]) == [2, 4, 6]
    # The final check is still recorded, and raises nothing twice.
    assert probe.watch.final_summary(0.9)["final_check"]["epoch"] == 5 and len(messages) == 1
    # The watch travels with the callback's state (a trainer backup).
    restored = callback.GradCamCallback(
        tiny_cnn(64),
        probe.images,
        probe.labels,
        sample_info.class_names,
        str(tmp_path / "o"),
        boxes=probe.boxes,
    )
    restored.set_state(json.loads(json.dumps(probe.get_state())))
    assert restored.watch.summary()["epoch"] == 5 and restored.watch.summary()["probes"] == 3


@tiers.dev("Grad-CAM of the probe set over several epochs: seconds")
def test_final_check_judges_the_kept_weights_of_a_run_too_short_for_a_streak(sample_info, tmp_path):
    messages = []
    logdir = str(tmp_path / "gradcam")
    # Probes every 5 epochs, a 3-epoch run: no probe, only the panels after the last epoch.
    probe = _centre_boxed_callback(sample_info, logdir, messages, every_n_epochs=5)
    _train(probe, [0.9, 0.95, 0.9])
    assert probe.watch.history == [] and probe.watch.summary()["shortcut_alarm"] is False
    last_weights_scores = _expected_scores(probe)
    # The kept weights (early stopping restores the best epoch's) differ from the last epoch's.
    keras.utils.set_random_seed(7)
    probe.explained.set_weights(tiny_cnn(64).get_weights())
    kept = _expected_scores(probe)
    assert kept["gradcam_energy_in_box"] != last_weights_scores["gradcam_energy_in_box"]
    summary = probe.watch.final_summary(0.95)  # what the trainer calls after its final evaluation
    final = summary["final_check"]
    assert (final["epoch"], final["val_accuracy"], final["center_baseline"]) == (2, 0.95, 1.0)
    assert final["pointing_game"] == pytest.approx(kept["gradcam_pointing_game"])
    assert final["energy_in_box"] == pytest.approx(kept["gradcam_energy_in_box"])
    assert final["pointing_game"] <= 0.85
    assert (summary["shortcut_alarm"], summary["raised_by"], summary["epoch"]) == (True, "final_check", 2)
    assert summary["probes"] == 0 and messages == [probe.watch.message()]
    assert messages[0].startswith("shortcut alarm at epoch 2: the kept weights' validation accuracy is high")
    # Written beside the panels, at the last epoch's step.
    texts = events.read_events(logdir, "text")
    assert (
        list(texts[callback.ALARM_TAG]) == [3] and texts[callback.ALARM_TAG][3].item().decode() == messages[0]
    )


@tiers.dev("Grad-CAM of the probe set over several epochs: seconds")
def test_final_check_without_high_accuracy_or_boxes_raises_nothing(sample_info, tmp_path):
    messages = []
    probe = _centre_boxed_callback(sample_info, str(tmp_path / "low"), messages, every_n_epochs=5)
    _train(probe, [0.3, 0.4])
    summary = probe.watch.final_summary(0.5)  # below 0.6: the model learned too little to tell
    assert summary["shortcut_alarm"] is False and summary["final_check"]["val_accuracy"] == 0.5
    assert summary["pointing_game"] <= 0.85 and messages == []
    assert callback.ALARM_TAG not in events.read_events(str(tmp_path / "low"), "text")
    # Without boxes the pointing game is skipped, at the end as at every probe: no final check.
    unboxed = _centre_boxed_callback(sample_info, str(tmp_path / "none"), messages, 5, boxes=False)
    _train(unboxed, [0.9, 0.95])
    summary = unboxed.watch.final_summary(0.95)
    assert summary["shortcut_alarm"] is False and summary["final_check"] is None
    assert summary["pointing_game_skipped"] == "none of the 12 selected probe images has an object box"
