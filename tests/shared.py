"""What the suite builds once per session, across pytest-xdist workers.

The recipe of the pytest-xdist docs ("making session-scoped fixtures execute
only once"): the first worker to take a file lock builds the thing in the
session's common temporary folder and pickles its result beside it; the
other workers wait on the lock, then read that result. A session without xdist
takes the same path with its own temporary folder.

What is built this way is read-only for the tests: a test that changes it copies it first.
"""

import os
import pickle

from filelock import FileLock


def session_root(tmp_path_factory):
    """The temporary folder common to every worker of this session."""
    root = tmp_path_factory.getbasetemp()
    return root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root


def once(tmp_path_factory, name, build):
    """Returns ``build(folder)``'s result, building it only in the session's first caller.

    Args:
        tmp_path_factory: pytest's session fixture.
        name: Names the folder ``build`` writes into and its lock; unique in the suite.
        build: Called with a folder that does not exist yet; returns a picklable value.

    Returns:
        The value, as unpickled from the file, in every worker alike.
    """
    root = session_root(tmp_path_factory)
    result = root / f"{name}.pickle"
    with FileLock(str(root / f"{name}.lock")):
        if not result.is_file():
            value = build(str(root / name))
            result.write_bytes(pickle.dumps(value))
        return pickle.loads(result.read_bytes())
