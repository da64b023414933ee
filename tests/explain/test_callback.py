"""explain.callback.GradCamCallback during a real model.fit, and the trainer's factory hook."""

import glob
import logging
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from contracts import dataset as data
from explain import callback
from trainer import callbacks as trainer_callbacks
from trainer import config as config_lib

NUM_CLASSES = 5


def _two_head_model():
    """A small model with a main and an auxiliary softmax head, like Inception v1's training model."""
    inputs = keras.Input((64, 64, 3))
    x = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="conv")(x)
    aux = keras.layers.GlobalAveragePooling2D(name="aux_gap")(x)
    aux = keras.layers.Dense(NUM_CLASSES, activation="softmax", name="aux1_predictions")(aux)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="features")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    main = keras.layers.Dense(NUM_CLASSES, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, {"predictions": main, "aux1_predictions": aux})
    loss = "sparse_categorical_crossentropy"
    model.compile("adam", loss={"predictions": loss, "aux1_predictions": loss})
    return model


def _image_steps(logdir):
    steps = {}
    for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "images":
                    steps.setdefault(value.tag, []).append(event.step)
    return steps


@pytest.fixture(scope="module")
def info(sample_records):
    return data.load_metadata(sample_records[0])


@pytest.fixture(scope="module")
def train_data():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, size=(16, 64, 64, 3)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, size=16)
    return images, {"predictions": labels, "aux1_predictions": labels}


def test_callback_writes_panels_every_n_epochs_on_a_multi_output_model(info, train_data, tmp_path):
    images, labels, boxes = callback.probe_batch(info, policy="none", crop_size=56, max_images=4)
    logdir = str(tmp_path / "gradcam")
    probe = callback.GradCamCallback(
        images, labels, info.class_names, logdir, every_n_epochs=2, max_images=3, boxes=boxes
    )
    model = _two_head_model()
    model.fit(*train_data, epochs=5, batch_size=8, verbose=0, callbacks=[probe])
    # Epochs 2 and 4, then the last epoch (5) at the end of training.
    assert _image_steps(logdir) == {callback.TAG: [2, 4, 5]}
    assert len(probe.images) == 3


def test_callback_failure_never_stops_training(info, train_data, tmp_path, caplog):
    images, labels, _ = callback.probe_batch(info, policy="none", crop_size=56, max_images=2)
    logdir = str(tmp_path / "gradcam")
    probe = callback.GradCamCallback(images, labels, info.class_names, logdir, every_n_epochs=1, layer="nope")
    model = _two_head_model()
    with caplog.at_level(logging.WARNING, logger=callback.__name__):
        history = model.fit(*train_data, epochs=2, batch_size=8, verbose=0, callbacks=[probe])
    assert len(history.history["loss"]) == 2
    assert "Unknown layer 'nope'" in caplog.text
    assert _image_steps(logdir) == {}


def test_probe_batch_applies_the_eval_crop(info):
    images, labels, boxes = callback.probe_batch(info, policy="crop", crop_size=56, max_images=8)
    assert images.shape == (8, 56, 56, 3) and labels.shape == (8,)
    assert boxes.min() >= 0 and boxes.max() <= 55


def test_trainer_hook_builds_the_callback(info, tmp_path):
    config = config_lib.TrainConfig(
        data_dir=info.data_dir, job_dir=str(tmp_path / "job"), arch="minception", policy="crop", explain=True
    )
    extra = trainer_callbacks.extra_callbacks(
        config, info=info, main_model=None, log_dir=str(tmp_path / "logs"), chief=True
    )
    assert len(extra) == 1 and isinstance(extra[0], callback.GradCamCallback)
    assert extra[0].images.shape == (8, 56, 56, 3)
    assert extra[0].logdir == os.path.join(str(tmp_path / "logs"), "gradcam")


def test_factory_without_images_returns_a_harmless_callback(info, tmp_path, caplog):
    empty = data.DatasetInfo(**{**info.__dict__, "split_counts": {}})
    config = config_lib.TrainConfig(data_dir=info.data_dir, job_dir=str(tmp_path), arch="minception")
    with caplog.at_level(logging.WARNING, logger=callback.__name__):
        made = callback.make_callback(config=config, info=empty, model=None, log_dir=str(tmp_path))
    assert isinstance(made, keras.callbacks.Callback) and not isinstance(made, callback.GradCamCallback)
    assert "disabled" in caplog.text
