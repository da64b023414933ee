"""One voice for every command's progress and result lines.

Every line a command writes about its work reads ``HH:MM:SS <command>: <message>``
on standard error; a warning reads ``HH:MM:SS <command>: warning: <message>``.
Standard output is kept for what a user pipes on (``predict``'s tables or JSON,
``evaluate``'s metrics, a dry run's job spec), and a failure is one ``error:
<message>`` line (:mod:`contracts.cli`). Work over many items (the Beam job's
shards, training steps, explanation batches, images to predict) is counted by
:class:`Progress`: a bar redrawn in place on a terminal, one line per step
anywhere else (a log file, a container's log, a CI job), each with the count
and the seconds so far.

Only the standard library here: the Beam job, the trainer and the explain
library all speak through this module.
"""

import logging
import re
import sys
import time

COMMANDS = ("preprocessing", "sample", "trainer", "explain", "predict", "evaluate", "export", "submit")
TIME_FORMAT = "%H:%M:%S"
BAR_WIDTH = 24
# Reads a line back (log scrapers, the tests): groups time, command, message.
LINE_PATTERN = re.compile(r"(\d\d:\d\d:\d\d) (" + "|".join(COMMANDS) + r"): (.*)")


def line(command, message, when=None):
    """Returns the one format of every progress and result line (without the newline)."""
    return f"{time.strftime(TIME_FORMAT, time.localtime(when))} {command}: {message}"


class Voice:
    """Writes one command's progress, result and warning lines.

    Args:
        command: The name every line starts with (one of :data:`COMMANDS`).
        stream: Where lines go; by default the ``sys.stderr`` of the moment
            they are written (so a test's captured stderr receives them).
    """

    def __init__(self, command, stream=None):
        if command not in COMMANDS:
            raise ValueError(f"command must be one of {', '.join(COMMANDS)}, got {command!r}")
        self.command = command
        self._stream = stream

    @property
    def stream(self):
        """The stream lines are written to now."""
        return self._stream or sys.stderr

    def say(self, message):
        """Writes one progress or result line."""
        print(line(self.command, message), file=self.stream, flush=True)

    def warn(self, message):
        """Writes one warning line: something the user should look at, the run goes on."""
        self.say(f"warning: {message}")

    def progress(self, total, unit, interactive=None):
        """Returns a :class:`Progress` over ``total`` ``unit`` (e.g. ``"images"``)."""
        return Progress(self, total, unit, interactive=interactive)


class Progress:
    """Counts the items of one stage of work.

    On a terminal one bar is redrawn in place (``[######......] 96/300 images,
    4.1 s``) and ended with a newline by :meth:`close`; anywhere else every
    :meth:`advance` writes one line (``96/300 images, 4.1 s``), so a log shows
    the pace. Use it as a context manager.

    Args:
        voice: The command's :class:`Voice`.
        total: Items of the stage (``None`` when not known ahead).
        unit: What is counted, plural (``"images"``, ``"shards"``).
        interactive: Force the bar (``True``) or the lines (``False``); by
            default the bar exactly when the stream is a terminal.
    """

    def __init__(self, voice, total, unit, interactive=None):
        self.voice = voice
        self.total = total
        self.unit = unit
        stream = voice.stream
        self.interactive = _is_terminal(stream) if interactive is None else interactive
        self.done = 0
        self._start = time.monotonic()
        self._drawn = False

    @property
    def seconds(self):
        """Seconds since the stage started."""
        return time.monotonic() - self._start

    def text(self, detail=""):
        """The count line: ``done/total unit, seconds`` and an optional detail."""
        count = f"{self.done}/{self.total}" if self.total is not None else str(self.done)
        extra = f"; {detail}" if detail else ""
        return f"{count} {self.unit}, {self.seconds:.1f} s{extra}"

    def advance(self, count=1, detail=""):
        """Adds ``count`` finished items and shows the new count (with ``detail``, e.g. a score so far)."""
        self.done += count
        if not self.interactive:
            self.voice.say(self.text(detail))
            return
        filled = BAR_WIDTH if not self.total else min(BAR_WIDTH, BAR_WIDTH * self.done // self.total)
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        # \r and a clear-to-end-of-line: the bar is redrawn in place, shorter lines leave nothing behind.
        self.voice.stream.write("\r" + line(self.voice.command, f"[{bar}] {self.text(detail)}") + "\x1b[K")
        self.voice.stream.flush()
        self._drawn = True

    def close(self):
        """Ends the bar's line on a terminal (nothing to do for plain lines)."""
        if self._drawn:
            self.voice.stream.write("\n")
            self.voice.stream.flush()
            self._drawn = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def _is_terminal(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # A stream without isatty, or a closed one.
        return False


class Handler(logging.Handler):
    """A ``logging`` handler that writes records in the one voice of ``command``.

    For the modules that log through ``logging`` (the Beam job's, whose
    records Beam's own workers also emit, and the Grad-CAM callback's):
    WARNING and above get the ``warning:`` mark.
    """

    def __init__(self, command, stream=None):
        super().__init__()
        self.voice = Voice(command, stream)

    def emit(self, record):
        try:
            message = record.getMessage()
            if record.levelno >= logging.WARNING:
                message = f"warning: {message}"
            print(line(self.voice.command, message, record.created), file=self.voice.stream, flush=True)
        except Exception:  # logging's own contract: a handler never raises.
            self.handleError(record)


def attach(logger_name, command, level=logging.INFO):
    """Sends ``logger_name``'s records to stderr in ``command``'s voice (once; an entry point calls it).

    Returns:
        The logger.
    """
    logger = logging.getLogger(logger_name)
    if not any(isinstance(h, Handler) for h in logger.handlers):
        logger.addHandler(Handler(command))
    logger.setLevel(level)
    # TensorFlow and Beam install root handlers of their own; ours is enough.
    logger.propagate = False
    return logger
