#!/bin/sh
# Installs this package (not editable) with its runtime extras, from the
# folder holding setup.py. The Dockerfile runs exactly this script, and so does
# the test that installs the package into a fresh virtualenv.
#   PYTHON          interpreter whose environment receives the package (default: python)
#   EXTRAS          comma-separated extras (default: hypertune)
#   PIP_EXTRA_ARGS  more pip flags, e.g. "--no-deps --no-build-isolation" in tests
set -eu
PYTHON="${PYTHON:-python}"
EXTRAS="${EXTRAS:-hypertune}"
# PIP_EXTRA_ARGS holds several flags: word splitting is wanted.
# shellcheck disable=SC2086
"$PYTHON" -m pip install --no-cache-dir ${PIP_EXTRA_ARGS:-} ".[${EXTRAS}]"
