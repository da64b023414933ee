"""The suite's three tiers, and what puts a test in one.

- ``fast``: in-process only: no process, server, emulator, Beam job or training
  run. ``make test-fast``; run it after every change.
- ``dev``: everything but the long runs. ``make test-dev``; run it before a commit.
- ``long``: trains beyond a few steps, a multi-process cluster, the demo.
  ``make test`` (CI) runs every tier.

Nobody places a test by hand in the fast tier: conftest gives each test the
highest tier of what it uses (:func:`tier_of`). What it uses is

- the fixtures it requests, and the fixtures those request;
- the functions its code names, and theirs in turn, as far as they are the
  suite's own helpers (modules under ``tests``): a test that calls a helper that
  calls ``subprocess.run`` is a dev test.

What costs what is declared once, on the thing that costs it: a helper or
fixture carries ``@tiers.dev(why)`` or ``@tiers.long(why)``, and what lies
outside the suite (``subprocess``, the Beam job, the trainer's run) is declared
in :func:`declare_outside`. A declaration is final: the scan does not look
inside what is declared, so ``@tiers.fast(why)`` keeps a session fixture that
is built once (the sample's records) from pulling every test that reads it
out of the fast tier. A test may raise its own tier with ``@tiers.dev`` or
``@tiers.long`` (a test whose own body trains for minutes), never lower it.

A fast test that starts a process anyway (through code this scan cannot see)
fails with a message that says how to declare it: conftest's guard.
"""

import builtins
import inspect
import sys
import types

FAST, DEV, LONG = "fast", "dev", "long"
ORDER = (FAST, DEV, LONG)

# id(object) -> (object, tier, reason). The object is kept so its id stays its own.
_DECLARED = {}

# What the scan cannot resolve to an object, by name: a method of a local (``model.fit(...)``) or
# a keyword argument (``tf.function(f, jit_compile=True)``).
COSTLY_NAMES = {
    "fit": (DEV, "Model.fit trains a model"),
    "jit_compile": (DEV, "XLA compiles a function"),
}


def declare(obj, tier, reason):
    """Declares that using ``obj`` (a function, class or fixture function) puts a test in ``tier``."""
    if tier not in ORDER:
        raise ValueError(f"unknown tier {tier!r}; one of {ORDER}")
    _DECLARED[id(obj)] = (obj, tier, reason)
    return obj


def fast(reason):
    """Decorator: what it decorates costs little per test though it looks costly (built once per session).

    A declaration is final: the scan does not look inside what is declared.
    """
    return lambda obj: declare(obj, FAST, reason)


def dev(reason):
    """Decorator: what it decorates starts a process, a server, the emulator, a Beam job or a short run."""
    return lambda obj: declare(obj, DEV, reason)


def long(reason):
    """Decorator: what it decorates trains beyond a few steps, runs a cluster or the demo."""
    return lambda obj: declare(obj, LONG, reason)


def declared(obj):
    """Returns ``(tier, reason)`` declared for ``obj`` (unwrapping decorators), or None."""
    seen = set()
    while obj is not None and id(obj) not in seen:
        seen.add(id(obj))
        found = _DECLARED.get(id(obj))
        if found is not None and found[0] is obj:
            return found[1], found[2]
        obj = getattr(obj, "__wrapped__", None)
    return None


def declare_outside():
    """Declares the costly things the suite calls but does not own: processes, the Beam job, a run."""
    import multiprocessing
    import subprocess

    for name in ("run", "Popen", "call", "check_call", "check_output"):
        declare(getattr(subprocess, name), DEV, f"subprocess.{name} starts a process")
    declare(multiprocessing.Process, DEV, "multiprocessing.Process starts a process")

    from preprocessing import task as beam_task

    declare(beam_task.run, DEV, "preprocessing.task.run runs the Beam job")
    declare(beam_task.main, DEV, "preprocessing.task.main runs the Beam job")

    from trainer import models, train

    declare(train.run, DEV, "trainer.train.run trains a model")
    # Seconds per build, and each forward pass of a full-size network is seconds more on 2 cores.
    declare(models.build_model, DEV, "trainer.models.build_model builds a full-size architecture")

    from trainer import export, tflite

    # Each traces and saves every serving signature (or converts them): seconds per call, and the
    # fast tier's minute holds a few of them at most.
    for module, names in (
        (export, ("export_saved_model", "export_model", "main")),
        (tflite, ("convert", "run", "main")),
    ):
        for name in names:
            declare(
                getattr(module, name), DEV, f"{module.__name__}.{name} writes a SavedModel or TFLite file"
            )


def _code_names(code):
    """Every global or attribute name that ``code`` and the functions nested in it load."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def _keyword_names(code):
    """The keyword-argument names of the calls in ``code`` and the functions nested in it."""
    names = set()
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _keyword_names(const)
        elif isinstance(const, tuple) and all(isinstance(item, str) for item in const):
            names.update(const)
    return names


def _is_suite_function(obj):
    module = getattr(obj, "__module__", "") or ""
    return inspect.isfunction(obj) and (module == "tests" or module.startswith("tests."))


def _functions_used(func):
    """The objects that ``func``'s code names: its module's globals, and attributes of its modules."""
    func = inspect.unwrap(func)
    code = getattr(func, "__code__", None)
    if code is None:
        return []
    names = _code_names(code)
    scope = getattr(func, "__globals__", {})
    found = []
    # ``from preprocessing import task`` inside a function binds a local: find the module by name.
    local_modules = [sys.modules.get(f"{a}.{b}") for a in names for b in names]
    for obj in [scope.get(name, getattr(builtins, name, None)) for name in names] + local_modules:
        if obj is None:
            continue
        found.append(obj)
        if isinstance(obj, types.ModuleType):
            # ``helpers.run_cli``: the attribute's name is among the loaded names too.
            found.extend(getattr(obj, attr) for attr in names if attr in vars(obj))
        elif inspect.isclass(obj):
            found.extend(getattr(obj, attr) for attr in names if attr in vars(obj))
    return found


def tier_of(functions):
    """The tier of a test that runs ``functions`` (the test, its fixtures).

    Returns:
        ``(tier, reasons)``: the highest tier declared for anything the functions
        use, directly or through the suite's own helpers, and why.
    """
    found = {FAST: set()}

    def count(level, reason):
        found.setdefault(level, set()).add(reason)

    stack, seen = list(functions), set()
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        declaration = declared(obj)
        if declaration is not None:
            count(*declaration)
        elif _is_suite_function(inspect.unwrap(obj)):
            stack.extend(_functions_used(obj))
            code = inspect.unwrap(obj).__code__
            for name in (_code_names(code) | _keyword_names(code)) & COSTLY_NAMES.keys():
                count(*COSTLY_NAMES[name])
    tier = max(found, key=ORDER.index)
    return tier, sorted(found[tier])
