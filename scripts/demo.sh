#!/usr/bin/env bash
# The demo: every capability the project has so far, on a generated sample.
# Usage: scripts/demo.sh OUT_DIR (make demo passes demo-run/).
set -euo pipefail
OUT="${1:-demo-run}"
rm -rf "$OUT"
mkdir -p "$OUT"
echo "== 1/2 writing the sample dataset (tiny-imagenet-200 layout) to $OUT/raw"
python -m preprocessing.sample --out "$OUT/raw" --classes 10 --train-per-class 120 --val-per-class 20
echo "== 2/2 converting it to TFRecords with the Beam job into $OUT/data"
python -m preprocessing.task --raw-dir "$OUT/raw" --output-dir "$OUT/data"
echo "== done: TFRecords and metadata.json in $OUT/data"
