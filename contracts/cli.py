"""What every command line shares: a usage error is one ``error:`` line on stderr and exit code 2."""

import argparse

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
