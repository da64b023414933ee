"""Per-image CPU latency: the TFLite files (float, int8) next to the SavedModel export, same images, same run.

Every path gets one image per call (what a phone or an edge box does) and is
timed over the same ``--images`` images after a warm-up pass:

    (a) the SavedModel export's ``serving_default`` (trainer/export.py) on the
        images' PNG bytes: decode, resize, crop, model, top-5 (PNG is lossless
        and the images are already ``S x S``, so it sees the very pixels the
        TFLite files get);
    (b) its ``preprocess`` signature alone: the decoding share of (a);
    (c) the float TFLite file (trainer/tflite.py) on the uint8 pixels;
    (d) the full-integer int8 file, calibrated on the same images.

It prints a table of median and 90th-percentile milliseconds per image and
each file's size, then the ratios ``savedmodel_over_float``,
``savedmodel_over_int8`` and ``float_over_int8`` (above 1: the second is faster).

Without ``--job`` the model is a registered architecture with random weights
(latency does not depend on what the weights learnt) and the images are random
pixels; with ``--job J --data-dir D`` it is the job's model on the test split's
first images. Usage::

    python benchmarks/tflite_latency.py --arch minception --images 100
    python benchmarks/tflite_latency.py --job jobs/minception --data-dir data/tiny --images 100
"""

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras
import numpy as np
import tensorflow as tf

from contracts import dataset, jobdir
from contracts import policy as policy_lib
from trainer import export, models, tflite

IMAGE_SIZE = 64


def _random_job(arch, num_classes):
    """A random-weights model of ``arch`` with its default policy: ``(model, image_size, policy, crop)``."""
    policy = models.get_defaults(arch).augmentation
    crop_size = policy_lib.default_crop_size(IMAGE_SIZE)
    size = policy_lib.output_size(policy, IMAGE_SIZE, crop_size)
    model = models.build_model(arch, num_classes, input_size=size, weights=None, seed=0)
    return models.main_output_model(model), IMAGE_SIZE, policy, crop_size


def _test_images(data_dir, count):
    """The first ``count`` test images of a dataset as uint8 ``[N, S, S, 3]``."""
    info = dataset.load_metadata(data_dir)
    split = "test" if info.split_counts.get("test", 0) else "valid"
    batches = dataset.make_dataset(info, split, global_batch_size=count).take(1)
    return next(iter(batches))[0].numpy().astype(np.uint8)


def _latencies(function, inputs):
    """Milliseconds of one call per input, after a warm-up pass over them all."""
    for item in inputs:
        function(item)
    times = []
    for item in inputs:
        start = time.perf_counter()
        function(item)
        times.append(1000 * (time.perf_counter() - start))
    return np.asarray(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="minception", choices=models.list_models())
    parser.add_argument("--classes", type=int, default=200, help="Classes of the random model.")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="TFLite interpreter threads.")
    parser.add_argument(
        "--job", help="A trained job dir (model.keras, config.json) instead of random weights."
    )
    parser.add_argument("--data-dir", help="The job's dataset: its test images are the images (with --job).")
    args = parser.parse_args(argv)
    if args.job:
        predictor = jobdir.load(args.job, data_dir=args.data_dir)
        model, size, policy, crop = (
            predictor.model,
            predictor.image_size,
            predictor.policy,
            predictor.crop_size,
        )
        images = _test_images(args.data_dir, args.images)
        layer = models.get_defaults(jobdir.read_config(args.job)["arch"]).feature_layer
    else:
        keras.utils.set_random_seed(0)
        model, size, policy, crop = _random_job(args.arch, args.classes)
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (args.images, size, size, 3), dtype=np.uint8)
        layer = models.get_defaults(args.arch).feature_layer
    num_classes = int(model.outputs[0].shape[-1])
    names = [f"class_{index}" for index in range(num_classes)]

    def representative():
        for image in images:
            yield [image[None].astype(np.float32)]

    with tempfile.TemporaryDirectory() as folder:
        saved = os.path.join(folder, "export")
        export.export_saved_model(
            model,
            saved,
            layer=layer,
            wnids=names,
            class_names=names,
            image_size=size,
            policy=policy,
            crop_size=crop,
        )
        loaded = tf.saved_model.load(saved)
        saved_bytes = sum(
            os.path.getsize(os.path.join(root, name)) for root, _, files in os.walk(saved) for name in files
        )
        files = {
            "float": tflite.convert(model, image_size=size, policy=policy, crop_size=crop),
            "int8": tflite.convert(
                model, image_size=size, policy=policy, crop_size=crop, representative=representative
            ),
        }
        pngs = [tf.constant([tf.io.encode_png(image).numpy()]) for image in images]
        serve = loaded.signatures[export.SIGNATURE]
        preprocess = loaded.signatures[export.PREPROCESS_SIGNATURE]
        rows = {
            "(a) SavedModel serving_default (PNG bytes)": (
                _latencies(lambda b: serve(images=b), pngs),
                saved_bytes,
            ),
            "(b) SavedModel preprocess only": (_latencies(lambda b: preprocess(images=b), pngs), None),
        }
        for name, content in files.items():
            runner = tflite.Runner(content, num_threads=args.threads)
            label = f"({'c' if name == 'float' else 'd'}) TFLite {name} (uint8 pixels)"
            rows[label] = (_latencies(runner, [image[None] for image in images]), len(content))
    print(
        f"model={args.job or args.arch} classes={num_classes} input={size}px policy={policy} "
        f"images={len(images)} tflite_threads={args.threads} cpus={os.cpu_count()}"
    )
    print("| path | median ms/image | p90 ms/image | size MB |")
    print("|---|---|---|---|")
    for label, (times, size_bytes) in rows.items():
        megabytes = "" if size_bytes is None else f"{size_bytes / 1e6:.2f}"
        print(f"| {label} | {np.median(times):.2f} | {np.percentile(times, 90):.2f} | {megabytes} |")
    medians = [np.median(times) for times, _ in rows.values()]
    saved_ms, float_ms, int8_ms = medians[0], medians[2], medians[3]
    print(
        f"savedmodel_over_float={saved_ms / float_ms:.2f} savedmodel_over_int8={saved_ms / int8_ms:.2f} "
        f"float_over_int8={float_ms / int8_ms:.2f}"
    )


if __name__ == "__main__":
    main()
