"""Seconds spent in each stage of a run, for the run's last line.

A run's fixed cost (imports, tracing, the end's evaluation and export) can
outweigh a short run's training; the one line of :meth:`StageClock.summary`
shows where it went (``benchmarks/overhead.py`` reads it). Only the standard
library and Keras' callback base class: the clock costs nothing measurable.
"""

import time

# The stages of a run, in order (a resumed or interrupted run may miss some).
STAGES = ("import", "build", "first step", "steps", "evaluation", "export")
LINE_PREFIX = "seconds per stage: "


class StageClock:
    """Laps of a monotonic clock, each named after the stage it ends.

    Args:
        start: ``time.monotonic()`` of the run's start (default: now).
    """

    def __init__(self, start=None):
        self.start = time.monotonic() if start is None else start
        self._last = self.start
        self.seconds = {}

    def lap(self, stage):
        """Ends ``stage`` now (its seconds add up when it is lapped again)."""
        now = time.monotonic()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._last
        self._last = now

    def has(self, stage):
        return stage in self.seconds

    def summary(self):
        """``seconds per stage: import 4.1, build 1.9, ...; total 30.2``."""
        parts = ", ".join(f"{name} {value:.1f}" for name, value in self.seconds.items())
        return f"{LINE_PREFIX}{parts}; total {self._last - self.start:.1f}"


def parse(line):
    """Returns ``stage -> seconds`` (and ``total``) of a :meth:`StageClock.summary` message, or ``None``."""
    if LINE_PREFIX not in line:
        return None
    stages, _, total = line.split(LINE_PREFIX, 1)[1].rpartition("; total ")
    seconds = {}
    for part in stages.split(", "):
        name, _, value = part.rpartition(" ")
        seconds[name] = float(value)
    seconds["total"] = float(total)
    return seconds


def callback(clock):
    """A Keras callback that laps ``build`` at the first step's start and ``first step`` at its end."""
    import keras

    class FirstStep(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if not clock.has("build"):
                clock.lap("build")

        def on_train_batch_end(self, batch, logs=None):
            if not clock.has("first step"):
                clock.lap("first step")

    return FirstStep()
