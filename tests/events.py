"""Reads back what the code under test wrote to TensorBoard event files."""

import glob
import os

import tensorflow as tf


def read_events(logdir, plugin):
    """Returns ``{tag: {step: tensor}}`` of the ``plugin`` summaries (e.g. ``"scalars"``) in ``logdir``."""
    found = {}
    for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == plugin:
                    found.setdefault(value.tag, {})[event.step] = tf.make_ndarray(value.tensor)
    return found
