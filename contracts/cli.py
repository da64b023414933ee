"""What every command line shares: a usage error is one ``error:`` line on stderr and exit code 2."""

import argparse

USAGE_ERROR = 2


class ArgumentParser(argparse.ArgumentParser):
    """An ``argparse.ArgumentParser`` whose usage errors are one line, without the usage text."""

    def error(self, message):
        self.exit(USAGE_ERROR, f"error: {message}\n")
