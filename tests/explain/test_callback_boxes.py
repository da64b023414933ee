"""explain.callback on probes without object boxes (the pointing game is skipped, said once) and
with boxes covering the whole image (scored, flagged once, no shortcut alarm)."""

import json
import os

import keras
import numpy as np

from contracts import dataset as data
from explain import callback
from tests import events, tiers
from tests.explain import tiny_cnn


def _probe_epochs(probe, accuracies):
    """Ends one epoch per accuracy (as ``val_accuracy``) and training; returns each epoch's logs."""
    epoch_logs = []
    for epoch, accuracy in enumerate(accuracies):
        logs = {"val_accuracy": accuracy}
        probe.on_epoch_end(epoch, logs)
        epoch_logs.append(logs)
    probe.on_train_end()
    return epoch_logs


@tiers.dev("Grad-CAM of the probe set over several epochs: seconds")
def test_whole_image_boxes_keep_their_numbers_say_so_once_and_raise_no_alarm(sample_info, tmp_path):
    images, labels, _ = callback.probe_batch(sample_info, policy="none", crop_size=56, max_images=12)
    # Every peak is in a whole-image box, the centre baseline's too: "at or below the baseline"
    # says nothing, so the accuracy that rises at every probe below raises no alarm.
    boxes = np.tile([0, 0, 63, 63], (len(images), 1))
    keras.utils.set_random_seed(2)
    messages = []
    probe = callback.GradCamCallback(
        tiny_cnn(64),
        images,
        labels,
        sample_info.class_names,
        str(tmp_path / "gradcam"),
        every_n_epochs=1,
        boxes=boxes,
        watch=callback.ShortcutWatch(probes=2, chance=0.2),
        log=messages.append,
    )
    epoch_logs = _probe_epochs(probe, [0.3, 0.4, 0.5, 0.6])
    for logs in epoch_logs:
        assert logs["gradcam_pointing_game"] == logs["gradcam_pointing_game_center_baseline"] == 1.0
    line = (
        "the pointing game cannot tell the model from its baselines: the boxes of 12 of 12 scored images "
        "cover at least 90% of the image, so the centre and random baselines hit too "
        "(1.000 and 1.000 against the model's 1.000)"
    )
    assert messages == [line]
    summary = probe.watch.summary()
    assert summary["shortcut_alarm"] is False and summary["probes"] == 4
    assert summary["pointing_game"] == 1.0 and summary["pointing_game_uninformative"] == line
    assert summary["pointing_game_skipped"] is None
    # The flag travels with the probes in a backup: a resumed run raises no alarm either.
    resumed = callback.ShortcutWatch(probes=2, chance=0.2)
    resumed.load_state(json.loads(json.dumps(probe.watch.get_state())))
    assert resumed.add(4, 0.7, 1.0, 1.0) is False


def _boxless_callback(data_dir, tmp_path, messages):
    info = data.load_metadata(data_dir)
    keras.utils.set_random_seed(0)
    made = callback.from_dataset(
        tiny_cnn(64),
        info,
        policy="none",
        crop_size=56,
        log_dir=str(tmp_path),
        every_n_epochs=1,
        max_images=4,
        watch=callback.ShortcutWatch(probes=2, chance=0.2),
        log=messages.append,
    )
    assert isinstance(made, callback.GradCamCallback)
    return made


@tiers.dev("Grad-CAM of the probe set over several epochs: seconds")
def test_dataset_without_boxes_skips_the_pointing_game_once(boxless_records, tmp_path):
    messages = []
    made = _boxless_callback(boxless_records, tmp_path, messages)
    reason = "the dataset has no object boxes (metadata.json: 0 boxes in valid)"
    assert messages == [f"pointing game skipped: {reason}"]
    assert made.skipped == reason and made.boxes is None
    epoch_logs = _probe_epochs(made, [0.3, 0.4, 0.5])
    # No score (not 0, not 1) joins the logs; the panels are still written at every probe.
    assert epoch_logs == [{"val_accuracy": 0.3}, {"val_accuracy": 0.4}, {"val_accuracy": 0.5}]
    written = events.read_events(os.path.join(str(tmp_path), "gradcam"), "images")
    assert sorted(written[callback.TAG]) == [1, 2, 3]
    assert messages == [f"pointing game skipped: {reason}"]  # said once, not at every probe
    summary = json.loads(json.dumps(made.watch.summary()))  # as metrics.json holds it
    assert summary["pointing_game_skipped"] == reason and summary["shortcut_alarm"] is False
    assert summary["probes"] == 0 and summary["pointing_game"] is None and summary["center_baseline"] is None


def test_older_dataset_without_a_box_count_falls_back_to_the_probe_images(
    boxless_records_uncounted, sample_info, tmp_path
):
    messages = []
    made = _boxless_callback(boxless_records_uncounted, tmp_path, messages)
    assert data.load_metadata(boxless_records_uncounted).box_count("valid") is None
    count = sample_info.split_counts["valid"]  # fewer than PROBE_IMAGES: all of them are probed
    reason = f"none of the {count} selected valid images has an object box"
    assert messages == [f"pointing game skipped: {reason}"] and made.watch.skipped == reason
    assert _probe_epochs(made, [0.3]) == [{"val_accuracy": 0.3}]
    assert len(messages) == 1


def test_dataset_with_boxes_plays_the_game_silently(sample_records, tmp_path):
    messages = []
    made = _boxless_callback(sample_records[0], tmp_path, messages)
    assert made.skipped is None and made.boxes is not None and messages == []
    [logs] = _probe_epochs(made, [0.3])
    assert set(logs) == {"val_accuracy", *callback.SCORES}
    assert made.watch.summary()["pointing_game_skipped"] is None
