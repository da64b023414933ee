"""Reads back what the code under test wrote to TensorBoard event files: the suite's one reader."""

import glob
import os

import tensorflow as tf


def summaries(logdir):
    """Yields ``(tag, step, plugin, tensor)`` for every summary in ``logdir``'s event files, in order."""
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                plugin = value.metadata.plugin_data.plugin_name
                yield value.tag, event.step, plugin, tf.make_ndarray(value.tensor)


def read_events(logdir, plugin):
    """Returns ``{tag: {step: tensor}}`` of the ``plugin`` summaries (e.g. ``"scalars"``) in ``logdir``."""
    found = {}
    for tag, step, kind, tensor in summaries(logdir):
        if kind == plugin:
            found.setdefault(tag, {})[step] = tensor
    return found


def latest(logdir):
    """Returns ``{tag: (plugin, tensor)}``: each tag's last summary in ``logdir``."""
    return {tag: (plugin, tensor) for tag, _, plugin, tensor in summaries(logdir)}
