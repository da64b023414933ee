"""A full disk for the tests: the kernel's own refusal of a write, without root or a tmpfs."""

import contextlib
import resource
import signal
import threading

import pytest


@contextlib.contextmanager
def file_size_limit(limit):
    """Makes every write past ``limit`` bytes of a file fail with ``EFBIG``, in this process only.

    SIGXFSZ, which the kernel sends with the refusal, is ignored meanwhile: it would end the process.
    """
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers are set in the main thread only")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
