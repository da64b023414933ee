"""trainer.callbacks.ProgressLogger: a bar over each epoch's steps on a terminal, one line per epoch."""

import io
import re

from contracts import voice
from tests import streams
from trainer import callbacks


def _epoch(logger, epoch, steps):
    logger.on_epoch_begin(epoch)
    for step in range(steps):
        logger.on_train_batch_end(step, {"loss": 2.0 - step / 10, "accuracy": 0.25, "lr": 0.1})
    logger.on_epoch_end(epoch, {"loss": 1.75, "accuracy": 0.5, "val_accuracy": 0.375, "note": "text"})


def test_off_a_terminal_one_line_per_epoch():
    stream = io.StringIO()
    logger = callbacks.ProgressLogger(epochs=2, steps_per_epoch=3, speaker=voice.Voice("trainer", stream))
    _epoch(logger, 0, 3)
    _epoch(logger, 1, 3)
    lines = stream.getvalue().splitlines()
    pattern = r"\d\d:\d\d:\d\d trainer: epoch (\d)/2, \d+\.\d s; "
    pattern += r"loss 1\.75, accuracy 0\.5, val_accuracy 0\.375"
    assert [re.fullmatch(pattern, line).group(1) for line in lines] == ["1", "2"], lines


def test_on_a_terminal_a_bar_per_epoch_then_its_line():
    stream = streams.Terminal()
    logger = callbacks.ProgressLogger(epochs=1, steps_per_epoch=4, speaker=voice.Voice("trainer", stream))
    _epoch(logger, 0, 4)
    bar_line, epoch_line = stream.getvalue().split("\n")[:2]
    draws = bar_line.split("\r")[1:]
    assert len(draws) == 4
    # The running loss and accuracy (not the learning rate) ride on the bar.
    bar = r"\[#{24}\] 4/4 steps of epoch 1/1, \d+\.\d s; loss 1\.7, accuracy 0\.25\x1b\[K$"
    assert re.search(bar, draws[-1])
    assert re.fullmatch(r"\d\d:\d\d:\d\d trainer: epoch 1/1, \d+\.\d s; loss 1\.75, .*", epoch_line)
