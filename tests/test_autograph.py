"""Every ``tf.function`` of the package traces without AutoGraph (docs/trainer.md, "Benchmark").

AutoGraph's conversion cost a quick run about a tenth of its time, and none of the package's
functions branches in Python on a tensor. A new ``tf.function`` that leaves it on only costs
time, so this scan, not a failing run, is what notices it.
"""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("contracts", "explain", "preprocessing", "trainer")


def _tf_functions(tree):
    """Yields ``(line, node)`` of every ``tf.function`` named in ``tree``, called or bare."""
    calls = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            target = node.func
        elif isinstance(node, ast.Attribute) and id(node) not in calls:
            target = node  # ``@tf.function`` without arguments
        else:
            continue
        if (
            isinstance(target, ast.Attribute)
            and target.attr == "function"
            and isinstance(target.value, ast.Name)
            and target.value.id == "tf"
        ):
            yield node.lineno, node


def _autograph_off(node):
    return isinstance(node, ast.Call) and any(
        keyword.arg == "autograph"
        and isinstance(keyword.value, ast.Constant)
        and keyword.value.value is False
        for keyword in node.keywords
    )


def _package_files():
    for package in PACKAGES:
        for folder, _, names in os.walk(os.path.join(ROOT, package)):
            yield from (os.path.join(folder, name) for name in sorted(names) if name.endswith(".py"))


def test_every_tf_function_passes_autograph_false():
    found, left_on = 0, []
    for path in _package_files():
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        for line, node in _tf_functions(tree):
            found += 1
            if not _autograph_off(node):
                left_on.append(f"{os.path.relpath(path, ROOT)}:{line}")
    assert found >= 10, "the scan found too few tf.function uses: it no longer sees them"
    assert not left_on, f"tf.function without autograph=False: {left_on}"


def test_the_scan_tells_the_two_apart():
    tree = ast.parse(
        "@tf.function\ndef a(): pass\n"
        "b = tf.function(f, reduce_retracing=True)\n"
        "c = tf.function(f, autograph=False)\n"
        "@tf.function(input_signature=[], autograph=False)\ndef d(): pass\n"
    )
    verdicts = sorted((line, _autograph_off(node)) for line, node in _tf_functions(tree))
    assert verdicts == [(1, False), (3, False), (4, True), (5, True)]
