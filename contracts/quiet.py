"""TensorFlow's start-up lines off by default, on with ``-v``/``--verbose``.

Every command line calls :func:`quiet_tensorflow` first thing, before anything
imports TensorFlow: TensorFlow reads its logging settings once, while it loads.
Measured with TensorFlow 2.21 on Linux without a GPU:

* ``TF_CPP_MIN_LOG_LEVEL=2`` hides TensorFlow's C++ INFO and WARNING lines
  (``cpu_feature_guard``'s "This TensorFlow binary is optimized ..."); ERROR
  and FATAL lines still show.
* absl's "WARNING: All log messages before absl::InitializeLog() is called
  ...", ``cudart_stub``'s "Could not find cuda drivers ..." and, on CPUs where
  TensorFlow turns oneDNN's custom operations on by default (AVX-512 ones;
  measured on an AMD EPYC), ``port.cc``'s "oneDNN custom operations are on
  ..." come from static initialisers of shared libraries, while ``import
  tensorflow`` loads them and before any setting is read: no variable reaches them
  (``TF_CPP_MIN_LOG_LEVEL=3``, ``GLOG_minloglevel``, ``CUDA_VISIBLE_DEVICES``
  change nothing; the libraries read no ``GLOG_``/``ABSL_`` variable). So
  while the first ``import tensorflow`` runs, and only then, file descriptor 2
  goes through a filter process that drops exactly these lines
  (:data:`STARTUP_NOISE`) and passes every other line on, even after a crash.
  oneDNN itself stays on: ``TF_ENABLE_ONEDNN_OPTS`` would change numerics and
  is left alone.
* "E... failed call to cuInit: ... UNKNOWN ERROR (303)" is an ERROR line
  written when the devices are first listed, after the import, on a machine
  without the NVIDIA driver library: a healthy CPU-only machine. Only
  ``TF_CPP_MIN_LOG_LEVEL=3`` (which hides every C++ error) or
  ``TF_ENABLED_DEVICE_TYPES=CPU`` (which hides every accelerator) removes it,
  so instead the filter stays on while the devices are listed once, right
  after the import, and drops that exact line (error 303: no driver found).
  Any other cuInit failure (a driver that is there but broken) still shows,
  and ``-v`` shows them all.

Only the standard library here: this module runs before TensorFlow and the project load.
"""

import contextlib
import os
import re
import sys

VERBOSE_FLAGS = ("-v", "--verbose")
VERBOSE_HELP = "Show TensorFlow's own start-up and C++ log lines."

# Set unless the user set them; TensorFlow reads them once, when it loads.
ENVIRONMENT = {"TF_CPP_MIN_LOG_LEVEL": "2"}

# Whole lines that no setting reaches (see above); nothing else is dropped.
STARTUP_NOISE = (
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"I\d{4} [\d:.]+ +\d+ cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine, "
    r"GPU will not be used\.",
    r"I\d{4} [\d:.]+ +\d+ port\.cc:\d+\] oneDNN custom operations are on\. You may see slightly "
    r"different numerical results due to floating-point round-off errors from different computation "
    r"orders\. To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`\.",
    r"E\d{4} [\d:.]+ +\d+ cuda_platform\.cc:\d+\] failed call to cuInit: INTERNAL: CUDA error: "
    r"Failed call to cuInit: UNKNOWN ERROR \(303\)",
)

# The filter process: a separate process, so that lines written just before a crash
# (an abort in a static initialiser) still reach the terminal. Ctrl-C is for the parent;
# the filter ends when every writer of the pipe is gone.
_FILTER = """
import re, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
noise = re.compile(("(?:" + "|".join(sys.argv[1:]) + r")\\r?\\n?").encode())
out = sys.stdout.buffer
for line in sys.stdin.buffer:
    if out is not None and not noise.fullmatch(line):
        try:
            out.write(line)
            out.flush()
        except OSError:
            out = None
"""


def is_verbose(argv):
    """Whether ``argv`` asks for TensorFlow's own lines (``-v`` or ``--verbose`` before any ``--``)."""
    for arg in argv:
        if arg == "--":
            return False
        if arg in VERBOSE_FLAGS:
            return True
    return False


def add_verbose_flag(parser):
    """Adds ``-v``/``--verbose`` (read by :func:`quiet_tensorflow`) to an argparse parser."""
    parser.add_argument(*VERBOSE_FLAGS, action="store_true", help=VERBOSE_HELP)


def is_startup_noise(line):
    """Whether one stderr line (text or bytes, with or without its newline) is dropped by the filter."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", "replace")
    return re.fullmatch("(?:" + "|".join(STARTUP_NOISE) + r")\r?\n?", line) is not None


def quiet_tensorflow(argv=None, environ=None):
    """Silences TensorFlow's start-up lines unless ``-v``/``--verbose`` is given.

    Call it before anything imports TensorFlow. It sets :data:`ENVIRONMENT`'s
    variables where ``environ`` does not already hold them (a user's value
    wins) and filters :data:`STARTUP_NOISE` out of stderr while the first
    ``import tensorflow`` runs. With ``-v`` or ``--verbose`` it does nothing.

    Args:
        argv: The command-line arguments (default: ``sys.argv[1:]``).
        environ: The environment to update (default: ``os.environ``).

    Returns:
        The variables it set, as a dict (empty with ``-v``).
    """
    argv = sys.argv[1:] if argv is None else argv
    environ = os.environ if environ is None else environ
    if is_verbose(argv):
        return {}
    added = {name: value for name, value in ENVIRONMENT.items() if name not in environ}
    environ.update(added)
    already = any(isinstance(finder, _FilterWhileImporting) for finder in sys.meta_path)
    if "tensorflow" not in sys.modules and not already:
        sys.meta_path.insert(0, _FilterWhileImporting("tensorflow"))
    return added


class _FilterWhileImporting:
    """A ``sys.meta_path`` finder: the first import of ``name`` runs with stderr filtered."""

    def __init__(self, name):
        self.name = name

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        # Once: later imports find the module in sys.modules.
        sys.meta_path.remove(self)
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec(fullname, path, target) if find_spec else None
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _FilteredLoader(spec.loader)
        return spec


class _FilteredLoader:
    """Runs the real loader's ``exec_module`` with stderr going through the filter process."""

    def __init__(self, loader):
        self._loader = loader

    def __getattr__(self, name):
        # Everything else (is_package, get_resource_reader, ...) is the real loader's.
        if name == "_loader":
            raise AttributeError(name)
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        # The module sees its own loader, as without the filter.
        module.__loader__ = self._loader
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self._loader
        state = _start_filter()
        try:
            self._loader.exec_module(module)
            if state is not None:
                # The no-driver cuInit line comes when the devices are first listed: list
                # them now, filtered. Listing does not initialise the runtime, so logical
                # device settings made later still apply.
                with contextlib.suppress(Exception):
                    module.config.list_physical_devices()
        finally:
            if state is not None:
                _stop_filter(*state)


def _start_filter():
    """Points file descriptor 2 at a new filter process; returns ``(saved_fd, process)`` or None."""
    # Imported only now: the module being imported (TensorFlow) imports it anyway.
    import subprocess

    if not sys.executable:
        return None
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, AttributeError, ValueError):  # No stderr at all: nothing to filter.
        return None
    try:
        process = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _FILTER, *STARTUP_NOISE],
            stdin=subprocess.PIPE,
            stdout=saved,
            stderr=saved,
        )
    except OSError:
        os.close(saved)
        return None
    os.dup2(process.stdin.fileno(), 2)
    return saved, process


def _stop_filter(saved, process):
    """Gives file descriptor 2 back and waits until the filter has passed on every line."""
    import subprocess

    with contextlib.suppress(OSError, AttributeError, ValueError):
        sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
    process.stdin.close()
    # On a timeout a process started during the import holds the pipe; the filter ends with it.
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
