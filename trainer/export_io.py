"""An export folder is written whole or not at all: a hidden sibling, renamed into place when complete.

A SavedModel is several files (``saved_model.pb``, ``variables/``,
``assets.extra/``). An export that fails or is killed half way must leave
neither a folder that looks like an export (``saved_model.pb`` there, the
variables short) nor temporary files in the job dir. :func:`publish` hands the
writer a hidden sibling ``.NAME.partial-PID`` of the target and renames it over
the target once everything is written; on any failure the sibling is removed and
a disk or permission error becomes one :class:`ExportError` line. A sibling left
by a killed export (a SIGKILL runs no clean-up) is removed by the next export to
the same folder, before it writes: one export writes a folder at a time.
"""

import contextlib
import glob
import os
import shutil

import tensorflow as tf

from contracts import decode


class ExportError(ValueError):
    """The export could not be written (a full disk, no permission); the message is one line."""


def _partial_prefix(directory):
    parent, name = os.path.split(os.path.abspath(directory).rstrip(os.sep))
    return os.path.join(parent, f".{name}.partial-")


def _swap(partial, directory, aside):
    """Renames ``partial`` to ``directory``; a previous export there goes ``aside`` first, then away."""
    if os.path.isdir(directory) and not os.listdir(directory):
        os.rmdir(directory)  # The trainer's output folders exist, empty, from the start of the run.
    if os.path.lexists(directory):
        os.rename(directory, aside)
    os.rename(partial, directory)
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def publish(directory):
    """Yields an empty temporary folder to write an export into, which becomes ``directory`` at the end.

    Args:
        directory: The local export folder. A previous export there is replaced
            only once the new one is complete.

    Yields:
        The temporary folder (a hidden sibling of ``directory``).

    Raises:
        ExportError: When a file cannot be written or moved (``OSError``, or TensorFlow's own
            error from the SavedModel writer); nothing is left behind.
    """
    prefix = _partial_prefix(directory)
    for stale in glob.glob(glob.escape(prefix) + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    partial = f"{prefix}{os.getpid()}"
    try:
        os.makedirs(partial)
        yield partial
        _swap(partial, directory, f"{prefix}{os.getpid()}-replaced")
    except (OSError, tf.errors.OpError) as error:
        shutil.rmtree(partial, ignore_errors=True)
        reason = decode.error_message(error) if isinstance(error, tf.errors.OpError) else str(error)
        raise ExportError(f"cannot write the export to {directory}: {reason}") from None
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
