"""Explanation throughput: ``explain.task``'s batched Grad-CAM against the book's way, one image at a time.

The model is a registered architecture with random weights (the time of a
Grad-CAM does not depend on what the weights learnt) at its default input
size; the images are random pixels. In the same run it measures Grad-CAM
images/s of:

    (a) the book's way: one image per call through tf-keras-vis' ``Gradcam``
        (built once, as a notebook would);
    (b) ``explain.task``'s path: :class:`explain.gradcam.Explainer` on batches
        of ``--batch-size`` (tf-keras-vis on a float32 clone of the model);

and prints ``batched_over_book=X`` (target: at least 10). It then times the
faithfulness metrics ``explain.task`` adds per image (deletion and insertion
curves, ROAD) and prints their milliseconds per image, each for the
explained map and its random and centre baselines together.

With ``--job J --data-dir D`` it instead runs ``explain.task`` with every
method on a trained job (``--sanity`` included) and prints one table row per
method: pointing game, deletion and insertion areas and the sanity check's
correlation after the first randomised layer, each next to its baselines.
Usage::

    python benchmarks/explain.py --arch minception --images 64
    python benchmarks/explain.py --job jobs/minception --data-dir data/tiny --images 64
"""

import argparse
import io
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras
import numpy as np

from contracts import policy as policy_lib
from contracts import voice
from explain import faithfulness, gradcam, task
from trainer import models


def _model(arch, num_classes):
    policy = models.get_defaults(arch).augmentation
    size = policy_lib.output_size(policy, 64, 56)
    model = models.build_model(arch, num_classes, input_size=size, weights=None, seed=0)
    return models.main_output_model(model), size


def _timed(function, repeats):
    """Returns the best wall time of ``repeats`` calls (after one warm-up call)."""
    function()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def book_way(model, layer, images, classes):
    """(a) One image per tf-keras-vis call, the visualiser built once."""
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    visualizer = Gradcam(model, model_modifier=ReplaceToLinear(), clone=True)

    def run():
        for image, index in zip(images, classes, strict=True):
            visualizer(CategoricalScore([int(index)]), image[None], penultimate_layer=layer)

    return run


def batched_way(model, layer, images, classes, batch_size):
    """(b) ``explain.task``'s path: one :class:`explain.gradcam.Explainer`, batches of ``batch_size``."""
    explainer = gradcam.Explainer(model, "gradcam", layer, batch_size=batch_size)

    def run():
        for start in range(0, len(images), batch_size):
            explainer(images[start : start + batch_size], classes[start : start + batch_size])

    return run


def compare_methods(job, data_dir, images, work_dir):
    """Runs ``explain.task`` with every method on ``job``; prints a markdown table row per method."""
    print(
        "| method | pointing game (centre, random) | deletion area (centre, random) | "
        "insertion area (centre, random) | sanity: correlation after 1 / all layers |"
    )
    print("|---|---|---|---|---|")
    for method in gradcam.METHODS:
        config = task.ExplainConfig(
            model=job,
            data_dir=data_dir,
            logdir=os.path.join(work_dir, method),
            num_images=images,
            method=method,
            balanced=True,
            sanity=True,
            max_maps=16,
        )
        start = time.perf_counter()
        results = task.run(config, speaker=voice.Voice("explain", io.StringIO()))
        game, scores, check = results["pointing_game"], results["faithfulness"], results["sanity"]
        cells = [f"{game['hit_rate']:.3f} ({game['center_baseline']:.3f}, {game['random_baseline']:.3f})"]
        for metric in ("deletion", "insertion"):
            entry = scores[metric]
            cells.append(f"{entry['auc']:.3f} ({entry['center_auc']:.3f}, {entry['random_auc']:.3f})")
        cells.append(f"{check['spearman'][1]:.2f} / {check['spearman'][-1]:.2f}")
        print(f"| {method} | " + " | ".join(cells) + f" |  ({time.perf_counter() - start:.0f}s)", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="minception", choices=models.list_models())
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--job", help="A trained job dir: compare the methods on it instead.")
    parser.add_argument("--data-dir", help="The job's dataset (with --job).")
    parser.add_argument("--work-dir", default="explain-methods", help="explain.task logdirs (with --job).")
    args = parser.parse_args(argv)
    if args.job:
        compare_methods(args.job, args.data_dir, args.images, args.work_dir)
        return
    keras.utils.set_random_seed(0)
    model, size = _model(args.arch, args.classes)
    layer = models.get_defaults(args.arch).feature_layer
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (args.images, size, size, 3)).astype(np.float32)
    classes = rng.integers(0, args.classes, args.images)
    print(f"arch={args.arch} input={size}px layer={layer} images={args.images} batch_size={args.batch_size}")
    book = _timed(book_way(model, layer, images, classes), args.repeats)
    batched = _timed(batched_way(model, layer, images, classes, args.batch_size), args.repeats)
    print(f"(a) book, one image per tf-keras-vis call: {args.images / book:8.1f} images/s")
    print(f"(b) explain.task, batches of {args.batch_size:3d}:       {args.images / batched:8.1f} images/s")
    print(f"batched_over_book={book / batched:.1f}")

    maps = gradcam.Explainer(model, "gradcam", layer)(images, classes)

    def predict(pixels):
        return np.asarray(model(pixels, training=False))

    for name, road in (("deletion+insertion", False), ("deletion+insertion+road", True)):

        def score(road=road):
            scorer = faithfulness.Faithfulness(predict, road=road, seed=0)
            for start in range(0, len(images), args.batch_size):
                stop = start + args.batch_size
                scorer.add(images[start:stop], maps[start:stop], classes[start:stop])

        took = _timed(score, 1)
        print(f"faithfulness {name}: {1000 * took / args.images:.1f} ms/image (map + random + centre)")


if __name__ == "__main__":
    main()
