"""A text stream that says it is a terminal, for the tests of bars redrawn in place (contracts.voice)."""

import io


class Terminal(io.StringIO):
    """An in-memory stream whose ``isatty()`` is true."""

    def isatty(self):
        return True
