"""contracts.voice: one line format for every command, a bar on a terminal, a line per step elsewhere."""

import io
import logging
import re
import time

import pytest

from contracts import voice
from tests import streams


def _fields(text):
    """``[(command, message)]`` of every line, each checked against the one format."""
    found = []
    for line in text.splitlines():
        match = voice.LINE_PATTERN.fullmatch(line)
        assert match, line
        time.strptime(match.group(1), voice.TIME_FORMAT)
        found.append((match.group(2), match.group(3)))
    return found


def test_say_and_warn_write_one_line_each_in_the_one_format():
    stream = io.StringIO()
    speaker = voice.Voice("trainer", stream)
    speaker.say("strategy default with 1 replicas")
    speaker.warn("the model is not better than chance")
    assert _fields(stream.getvalue()) == [
        ("trainer", "strategy default with 1 replicas"),
        ("trainer", "warning: the model is not better than chance"),
    ]


def test_default_stream_is_stderr_of_the_moment(capsys):
    speaker = voice.Voice("explain")
    speaker.say("12 images")
    captured = capsys.readouterr()
    assert captured.out == "" and _fields(captured.err) == [("explain", "12 images")]


def test_unknown_command_is_refused():
    with pytest.raises(ValueError, match=r"command must be one of .*got 'trainr'"):
        voice.Voice("trainr")


def test_progress_off_a_terminal_is_one_line_per_step_with_count_and_seconds():
    stream = io.StringIO()
    with voice.Voice("predict", stream).progress(5, "images") as steps:
        assert steps.interactive is False
        steps.advance(2)
        steps.advance(2, "hit rate 0.500")
        steps.advance()
    messages = [message for _, message in _fields(stream.getvalue())]
    pattern = r"(\d)/5 images, \d+\.\d s(; hit rate 0\.500)?"
    matches = [re.fullmatch(pattern, message) for message in messages]
    assert all(matches), messages
    assert [m.group(1) for m in matches] == ["2", "4", "5"]
    assert [bool(m.group(2)) for m in matches] == [False, True, False]
    assert "\r" not in stream.getvalue()


def test_progress_on_a_terminal_redraws_one_bar_and_ends_its_line():
    stream = streams.Terminal()
    with voice.Voice("preprocessing", stream).progress(4, "shards") as steps:
        assert steps.interactive is True
        steps.advance()
        steps.advance(3)
    text = stream.getvalue()
    # Two draws on one line, each from its start and cleared to its end; one newline when done.
    assert text.count("\r") == 2 and text.count("\n") == 1 and text.endswith("\x1b[K\n")
    draws = [draw.removesuffix("\x1b[K") for draw in text.rstrip("\n").split("\r")[1:]]
    fields = [_fields(draw)[0] for draw in draws]
    assert [command for command, _ in fields] == ["preprocessing", "preprocessing"]
    bars = [re.fullmatch(r"\[([#.]+)\] (\d)/4 shards, \d+\.\d s", message) for _, message in fields]
    assert [b.group(1) for b in bars] == ["#" * 6 + "." * 18, "#" * 24]
    assert [b.group(2) for b in bars] == ["1", "4"]


def test_progress_without_a_total_counts_up():
    stream = io.StringIO()
    steps = voice.Voice("sample", stream).progress(None, "classes", interactive=False)
    steps.advance(3)
    assert re.fullmatch(r"3 classes, \d+\.\d s", _fields(stream.getvalue())[0][1])


def test_logging_records_speak_in_the_same_voice_and_attach_is_idempotent():
    stream = io.StringIO()
    logger = voice.attach("tests.voice", "preprocessing")
    voice.attach("tests.voice", "preprocessing")
    handlers = [h for h in logger.handlers if isinstance(h, voice.Handler)]
    assert len(handlers) == 1 and logger.propagate is False
    handlers[0].voice = voice.Voice("preprocessing", stream)
    try:
        logger.info("planned %d classes", 5)
        logger.debug("not shown")
        logger.warning("could not remove %s", "x")
    finally:
        logger.removeHandler(handlers[0])
    assert _fields(stream.getvalue()) == [
        ("preprocessing", "planned 5 classes"),
        ("preprocessing", "warning: could not remove x"),
    ]
    assert logger.level == logging.INFO
