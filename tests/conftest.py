"""Shared fixtures: generated datasets in the tiny-imagenet-200 layout, their
records written by the Beam job itself (and their :class:`DatasetInfo`), and a
real GCS emulator on 127.0.0.1. :func:`free_port` is the one free-port helper
of the suite (``from tests.conftest import free_port``).

The hooks below place every test in its tier (tests/tiers.py): a ``fast``,
``dev`` or ``long`` marker that ``make test-fast`` and ``make test-dev`` select
on, a guard that fails a fast test which starts a process anyway, and a count
and time per tier at the end of the run."""

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from preprocessing import sample
from tests import datasets, shared, tiers

# tests/test_tiers.py runs a pytest session of its own to check the guard.
pytest_plugins = ["pytester"]


def pytest_addoption(parser):
    parser.addoption("--tiers-why", action="store_true", help="print each test's tier and what put it there")


def pytest_configure(config):
    # pytest-xdist's controller collects nothing: only the processes that collect need the
    # declarations, whose imports (TensorFlow, Beam) would delay every worker's start by seconds.
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        return
    tiers.declare_outside()


def _fixture_functions(item):
    """The functions of every fixture ``item`` uses (its closure: fixtures of fixtures too), and of
    those it names in ``request.getfixturevalue("name")``."""
    infos = getattr(item, "_fixtureinfo", None)
    if infos is None:
        return []
    functions = [defs[-1].func for defs in infos.name2fixturedefs.values() if defs]
    code = getattr(getattr(item, "function", None), "__code__", None)
    if code is not None and "getfixturevalue" in code.co_names:
        manager = item.session._fixturemanager
        names = [const for const in code.co_consts if isinstance(const, str)]
        while names:
            defs = manager.getfixturedefs(names.pop(), item)
            if defs and defs[-1].func not in functions:
                functions.append(defs[-1].func)
                names.extend(defs[-1].argnames)
    return functions


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Marks each test with its tier before ``-m`` selects on it."""
    for item in items:
        function = getattr(item, "function", None)
        found, reasons = tiers.tier_of([f for f in [function, *_fixture_functions(item)] if f is not None])
        by_hand = [mark.name for mark in item.iter_markers() if mark.name in tiers.ORDER]
        if getattr(function, "is_hypothesis_test", False):
            # Hundreds of drawn examples: seconds to tens of seconds per test.
            found, reasons = max(found, tiers.DEV, key=tiers.ORDER.index), [*reasons, "hypothesis"]
        tier = max([found, *by_hand], key=tiers.ORDER.index)
        item.add_marker(getattr(pytest.mark, tier))
        item.user_properties.append(("tier", tier))
        if config.getoption("--tiers-why"):
            why = "; ".join(reasons) or ("marked by hand" if tier != found else "in-process")
            print(f"{tier:>4}  {item.nodeid}  ({why})")
    items[:] = costliest_files_first(items)


def costliest_files_first(items):
    """``items`` with their files ordered by estimated cost, longest first, each file's tests in order.

    ``--dist loadfile`` hands whole files to the workers in collection order (the Makefile turns
    off xdist's own reordering by test count, which put the files of a few long runs last): the
    long runs start first and the many quick files fill in at the end, so both workers finish
    together instead of one running a long file alone. A file's estimate counts its tests by tier.
    """
    weight = {tiers.FAST: 1, tiers.DEV: 20, tiers.LONG: 400}
    files, cost = {}, {}
    for item in items:
        name = item.nodeid.split("::", 1)[0]
        files.setdefault(name, []).append(item)
        tier = dict(item.user_properties).get("tier", tiers.FAST)
        cost[name] = cost.get(name, 0) + weight[tier]
    order = sorted(files, key=lambda name: -cost[name])  # stable: ties keep collection order
    return [item for name in order for item in files[name]]


def _refuse_process(self, args, *rest, **kwargs):
    pytest.fail(
        f"a fast-tier test started a process ({str(args)[:120]}): declare the helper or fixture "
        "that starts it with @tiers.dev (tests/tiers.py), or add it to tiers.declare_outside",
        pytrace=False,
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    with _Guard(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    with _Guard(item):
        return (yield)


class _Guard:
    """While a fast test sets up and runs, starting a process fails it (a hook, not a fixture,
    so that the scan of the test's fixtures does not see ``subprocess`` here)."""

    def __init__(self, item):
        self.active = item.get_closest_marker(tiers.FAST) is not None

    def __enter__(self):
        if self.active:
            self.original = subprocess.Popen._execute_child
            subprocess.Popen._execute_child = _refuse_process

    def __exit__(self, *exc):
        if self.active:
            subprocess.Popen._execute_child = self.original


def pytest_terminal_summary(terminalreporter):
    """One line per tier: how many tests ran and their summed seconds (setup, call, teardown)."""
    counts, seconds = {}, {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            tier = dict(getattr(report, "user_properties", ())).get("tier")
            if tier is None or not hasattr(report, "duration"):
                continue
            seconds[tier] = seconds.get(tier, 0.0) + report.duration
            if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
                counts[tier] = counts.get(tier, 0) + 1
    if counts:
        parts = [f"{t} {counts.get(t, 0)} tests, {seconds.get(t, 0.0):.0f} s" for t in tiers.ORDER]
        terminalreporter.write_line("tiers: " + "; ".join(parts))


@pytest.fixture(scope="session")
def sample_raw(tmp_path_factory):
    """A small generated raw dataset: 5 classes, 40 train and 8 val images each (once per session).

    Returns:
        ``(raw_dir, info)`` where ``info`` is what
        :func:`preprocessing.sample.write_sample_dataset` returned.
    """
    spec = sample.SampleSpec(classes=5, train_per_class=40, val_per_class=8, test_images=6, seed=1)

    def build(folder):
        raw_dir = os.path.join(folder, "tiny-imagenet-200")
        return raw_dir, sample.write_sample_dataset(raw_dir, spec)

    return shared.once(tmp_path_factory, "sample-raw", build)


@pytest.fixture(scope="session")
@tiers.fast("the sample's records: one Beam job per session, shared by every worker")
def sample_records(sample_raw, tmp_path_factory):
    """TFRecords + metadata.json of :func:`sample_raw`, written by the Beam job once per session
    (for every worker).

    Returns:
        ``(data_dir, metadata)``.
    """
    raw_dir, _ = sample_raw

    def build(folder):
        out = os.path.join(folder, "data")
        return out, datasets.write_records(raw_dir, out)

    return shared.once(tmp_path_factory, "sample-records", build)


@pytest.fixture(scope="session")
def sample_info(sample_records):
    """:func:`contracts.dataset.load_metadata` of :func:`sample_records` (read once per session)."""
    from contracts import dataset

    return dataset.load_metadata(sample_records[0])


def free_port():
    """Returns a TCP port that is free on 127.0.0.1 (for emulators, servers and TF_CONFIG clusters)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
    """Starts gcp-storage-emulator on 127.0.0.1 and points clients at it.

    Sets ``STORAGE_EMULATOR_HOST`` (honoured by google-cloud-storage and Beam's
    GCS file system) for the whole session and yields its URL.
    """
    port = free_port()
    data_dir = tmp_path_factory.mktemp("gcs")
    exe = shutil.which("gcp-storage-emulator", path=os.path.dirname(sys.executable))
    cmd = [exe] if exe else [sys.executable, "-m", "gcp_storage_emulator"]
    proc = subprocess.Popen(
        [*cmd, "-d", str(data_dir), "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory", "-q"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("gcp-storage-emulator exited at start") from None
            time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError("gcp-storage-emulator did not start within 30 s")
    previous = {k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT")}
    os.environ["STORAGE_EMULATOR_HOST"] = url
    os.environ["GOOGLE_CLOUD_PROJECT"] = "test-project"
    yield url
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def gcs_bucket(gcs_emulator, request):
    """Creates a fresh bucket in the emulator and returns its name."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project="test-project", credentials=AnonymousCredentials())
    name = f"bucket-{abs(hash(request.node.nodeid)) % 10**8}-{int(time.time() * 1000) % 10**6}"
    client.create_bucket(name)
    return name
