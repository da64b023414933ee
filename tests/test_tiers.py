"""The tier scan (tests/tiers.py): a test lands in the tier of the costliest thing it uses."""

import subprocess

import pytest

from tests import tiers
from tests.trainer import helpers


def _starts_a_process():
    return subprocess.run(["true"], check=False)


def _calls_a_helper_that_starts_one():
    return _starts_a_process()


@tiers.fast("built once per session")
def _declared_fast():
    return subprocess.run(["true"], check=False)


@tiers.long("trains for minutes")
def _declared_long():
    return None


def _imports_inside():
    from preprocessing import task

    return task.run


def _fits(model):
    model.fit()


def _compiles(function):
    import tensorflow as tf

    return tf.function(function, jit_compile=True)


def _uses_both():
    _calls_a_helper_that_starts_one()
    _declared_long()


def _pure():
    return sorted([3, 1, 2])


@pytest.mark.parametrize(
    ("function", "tier", "reason"),
    [
        (_pure, tiers.FAST, None),
        (_starts_a_process, tiers.DEV, "subprocess.run starts a process"),
        (_calls_a_helper_that_starts_one, tiers.DEV, "subprocess.run starts a process"),
        (_declared_fast, tiers.FAST, "built once per session"),
        (_declared_long, tiers.LONG, "trains for minutes"),
        (_imports_inside, tiers.DEV, "preprocessing.task.run runs the Beam job"),
        (_fits, tiers.DEV, "Model.fit trains a model"),
        (_compiles, tiers.DEV, "XLA compiles a function"),
        (_uses_both, tiers.LONG, "trains for minutes"),
        (helpers.run_cli, tiers.DEV, "subprocess.run starts a process"),
    ],
)
def test_a_function_is_in_the_tier_of_the_costliest_thing_it_uses(function, tier, reason):
    found, reasons = tiers.tier_of([function])
    assert found == tier
    assert reasons == ([] if reason is None else [reason])


def test_conftest_marks_this_pure_test_fast_and_only_fast(request):
    names = {mark.name for mark in request.node.iter_markers()} & set(tiers.ORDER)
    assert names == {tiers.FAST}


def test_an_unknown_tier_is_refused():
    with pytest.raises(ValueError, match="unknown tier 'slow'"):
        tiers.declare(_pure, "slow", "no such tier")


def test_a_fast_test_that_starts_a_process_fails(pytester):
    """The guard: a process started where the scan cannot see it fails a fast test."""
    pytester.makeconftest(
        "from tests.conftest import pytest_collection_modifyitems, pytest_runtest_call, "
        "pytest_runtest_setup, pytest_configure, pytest_addoption\n"
    )
    pytester.makepyfile(
        "import importlib\ndef test_hidden():\n    importlib.import_module('subprocess').getoutput('true')\n"
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-p", "no:xdist")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*a fast-tier test started a process*@tiers.dev*"])
