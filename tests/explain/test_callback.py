"""explain.callback: GradCamCallback during a real model.fit, probe_batch and from_dataset."""

import dataclasses
import glob
import logging
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from contracts import dataset as data
from contracts import model as model_contract
from explain import callback, gradcam, render
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
    found = {}
    for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "images":
                    # An image summary's tensor is [width, height, png...].
                    png = tf.make_ndarray(value.tensor)[2]
                    found.setdefault(value.tag, {})[event.step] = tf.io.decode_png(png).numpy()
    return found


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
    images, labels, boxes = callback.probe_batch(sample_info, policy="crop", crop_size=56, max_images=6)
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
        data.make_dataset(sample_info, "train", global_batch_size=8, features="all").as_numpy_iterator()
    )
    np.testing.assert_array_equal(made.images, first["image"])


def test_from_dataset_without_images_is_a_no_op_with_a_warning(sample_info, tmp_path, caplog):
    empty = dataclasses.replace(sample_info, split_counts={"train": 0, "valid": 0, "test": 0})
    with caplog.at_level(logging.WARNING, logger=callback.__name__):
        made = callback.from_dataset(tiny_cnn(64), empty, policy="none", crop_size=56, log_dir=str(tmp_path))
    assert type(made) is keras.callbacks.Callback
    assert "Grad-CAM callback disabled" in caplog.text and sample_info.data_dir in caplog.text
    assert os.listdir(tmp_path) == []
