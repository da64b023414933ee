#!/usr/bin/env bash
# The demo: the whole flow on a generated sample, on the CPU.
#   raw folder -> Beam job -> TFRecords -> trainer (3 architectures) -> Grad-CAM -> summary
# Usage: scripts/demo.sh OUT_DIR   (make demo passes demo-run/)
#
# Sized to take minutes on a busy 2-core machine (the README has the measured time
# and disk use): a small sample, Minception trained just long enough to learn it,
# the two large architectures a few steps each with their costliest extras turned
# down (see the comments at each step).
set -euo pipefail
OUT="${1:-demo-run}"
# Sizes can be shrunk through the environment (tests/test_end_to_end.py does).
CLASSES="${DEMO_CLASSES:-8}"
TRAIN_PER_CLASS="${DEMO_TRAIN_PER_CLASS:-100}"
VAL_PER_CLASS="${DEMO_VAL_PER_CLASS:-8}"
MINCEPTION_EPOCHS="${DEMO_MINCEPTION_EPOCHS:-3}"
EXPLAIN_IMAGES="${DEMO_EXPLAIN_IMAGES:-16}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
rm -rf "$OUT"
mkdir -p "$OUT"
start=$(date +%s)
step() { echo; echo "== [$(( $(date +%s) - start ))s] $*"; }

step "1/4 writing a sample dataset in the tiny-imagenet-200 layout to $OUT/raw"
python -m preprocessing.sample --out "$OUT/raw" --classes "$CLASSES" \
    --train-per-class "$TRAIN_PER_CLASS" --val-per-class "$VAL_PER_CLASS" --test-images 20

step "2/4 converting it to sharded TFRecords with the Beam job (DirectRunner) into $OUT/data"
python -m preprocessing.task --raw-dir "$OUT/raw" --output-dir "$OUT/data"

# Each training or explaining process spends much of its time on one core (Python tracing
# the model's graphs, saving it): the three architectures train side by side, then are
# explained side by side, each line of their output prefixed with the model's name.
pids=()
alongside() {  # alongside NAME COMMAND...: starts COMMAND in the background, its lines as "[NAME] ..."
    local name="$1"
    shift
    "$@" 2>&1 | sed -u "s/^/[$name] /" &
    pids+=("$!")
}
finish() {  # waits for every process alongside() started (all of them, also after a failure); fails if any failed
    local pid failed=0
    for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
    pids=()
    return "$failed"
}

step "3/4 training the three side by side: Minception for $MINCEPTION_EPOCHS epochs (long enough to learn the sample), Inception v1 and Inception-ResNet-v2 for a few steps"
# Precise batch norm reads 2 training batches instead of a whole epoch's (docs/trainer.md).
alongside minception python -m trainer.task --data-dir "$OUT/data" --job-dir "$OUT/jobs/minception" \
    --arch minception --epochs "$MINCEPTION_EPOCHS" --batch-size 32 --learning-rate 0.002 --cache --precise-bn 2

# A few steps teach these two nothing, so they skip what only a trained model needs: the
# Grad-CAM probe during training (step 4 explains them), precise batch norm and the softmax
# temperature (each one more trace of the model's graph), and the export (Minception shows it).
alongside inception_v1 python -m trainer.task --data-dir "$OUT/data" --job-dir "$OUT/jobs/inception_v1" \
    --arch inception_v1 --epochs 1 --steps-per-epoch 3 --batch-size 16 --validation-steps 1 --precise-bn 0 \
    --explain false --calibration none --export false

# ImageNet weights cannot be downloaded offline: use them only when Keras has them cached.
IRV2_WEIGHTS=none
if [ -f "${KERAS_HOME:-$HOME/.keras}/models/inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5" ]; then
    IRV2_WEIGHTS=imagenet
fi
# As Inception v1, plus: its 54M float32 weights make a 220 MB model.keras (no optimizer state:
# trainer/callbacks.py), and plain SGD keeps slots out of the backup written at the epoch's end
# (Adam's two would triple it to 650 MB; its export would add another 214 MB). The backbone
# sees the 64-px images upsized to 96 rather than the book's 224:
# about a fifth of the compute, for a few steps that teach it nothing either way
# (--backbone-size, docs/models.md).
echo "Inception-ResNet-v2: weights $IRV2_WEIGHTS, backbone at 96x96"
alongside inception_resnet_v2 python -m trainer.task --data-dir "$OUT/data" \
    --job-dir "$OUT/jobs/inception_resnet_v2" --arch inception_resnet_v2 --weights "$IRV2_WEIGHTS" \
    --epochs 1 --steps-per-epoch 2 --batch-size 4 --validation-steps 1 --precise-bn 0 --optimizer sgd \
    --explain false --calibration none --export false --backbone-size 96
finish

step "4/4 explaining each model with Grad-CAM (pointing game against the object boxes; faithfulness for Minception)"
for arch in minception inception_v1 inception_resnet_v2; do
    images="$EXPLAIN_IMAGES"
    scores=--faithfulness
    if [ "$arch" != minception ]; then
        # A few training steps teach these two nothing to be faithful to, and
        # their faithfulness curves cost minutes on a CPU.
        images=$(( (EXPLAIN_IMAGES + 1) / 2 ))
        scores=--no-faithfulness
    fi
    alongside "$arch" python -m explain.task --model "$OUT/jobs/$arch" --data-dir "$OUT/data" --split test \
        --num-images "$images" --balanced --logdir "$OUT/jobs/$arch/logs/explain" \
        --out-dir "$OUT/gradcam/$arch" "$scores"
done
finish

step "done in $(( $(date +%s) - start ))s"
python scripts/demo_summary.py "$OUT"
