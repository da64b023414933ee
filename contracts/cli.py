"""What every command line shares: a usage error is one ``error:`` line on stderr and exit code 2
(an output folder that cannot be written included: :func:`check_writable_dir`)."""

import argparse
import os

from contracts import storage

USAGE_ERROR = 2


class ArgumentParser(argparse.ArgumentParser):
    """An ``argparse.ArgumentParser`` whose usage errors are one line, without the usage text."""

    def error(self, message):
        self.exit(USAGE_ERROR, f"error: {message}\n")


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_bool(text):
    """Parses a true/false word (``1/0``, ``true/false``, ``yes/no``, ``on/off``, any case)."""
    value = str(text).strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


class BooleanFlag(argparse.BooleanOptionalAction):
    """``--flag`` / ``--no-flag`` (argparse's ``BooleanOptionalAction``), and ``--flag false`` too.

    The explicit value keeps command lines, YAML-generated argument lists and
    tuning specs written for earlier versions (``--explain false``) working.
    """

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.nargs = "?"

    def __call__(self, parser, namespace, values, option_string=None):
        negative = option_string.startswith("--no-")
        if values is None:
            setattr(namespace, self.dest, not negative)
            return
        if negative:
            raise argparse.ArgumentError(self, f"{option_string} takes no value, got {values!r}")
        try:
            setattr(namespace, self.dest, parse_bool(values))
        except argparse.ArgumentTypeError as error:
            raise argparse.ArgumentError(self, str(error)) from None


class OutputPathError(ValueError):
    """An output folder cannot be written: a file is in its place or on its way, or no permission."""


def check_writable_dir(path, flag):
    """Checks that a local output folder is, or can be created as, a writable folder.

    Every command line calls this for its output folders before any heavy
    work, so a file where a folder belongs is one ``error:`` line (exit code
    2), not a traceback after minutes of training. Nothing is created.
    ``gs://`` URIs are not checked: no cheap call tells whether a prefix is
    writable, and the first upload names the URI when it is not.

    Args:
        path: The folder (local or ``gs://``); empty or ``None`` is skipped.
        flag: The flag or setting that named it, for the message.

    Raises:
        OutputPathError: When the folder cannot be written.
    """
    if not path or storage.is_gcs(path):
        return
    folder = os.path.abspath(path)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise OutputPathError(f"{flag} {path}: is a file, not a folder")
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise OutputPathError(f"{flag} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(f"{flag} {path}: {existing} is not writable")
