"""Explain a trained model on a dataset split: ``python -m explain.task --model J --data-dir D --logdir L``.

A fixed, seeded choice of images of the split (``--balanced``: spread over
the classes) is explained in batches. Each image becomes an original |
heatmap | overlay panel titled with its true and predicted class and the
confidence; panels are grouped into grids and written to TensorBoard (and to
``--out-dir`` as PNG). Where the images have object boxes the pointing game
and the share of heatmap energy inside the box are scored, overall and per
class, next to a centre-peaked and a random-peaked baseline; the results go
to TensorBoard scalars and to ``L/explain.json``. Without boxes (``metadata.json``
counts none in the split or, for an older dataset, no chosen image has one)
the game is skipped: one line says why, ``explain.json`` holds the reason
and no score. Boxes covering the whole image are scored with one line saying
that the score cannot tell the model from its baselines.

The same maps are scored for faithfulness (:mod:`explain.faithfulness`:
deletion, insertion and, unless ``--no-road``, ROAD), again next to a centre
and a random map; ``--sanity`` adds the cascading randomisation of the model's
top layers (:mod:`explain.sanity`), whose rank correlations tell whether the
method depends on the model at all.

Bad input (missing model or data, unknown method or layer, an output folder
that is a file) ends with one line on stderr and exit code 2. ``explain.json``
is strict JSON: a score that cannot be computed is ``null``.
"""

import dataclasses
import sys

# First, before anything imports TensorFlow: it reads its log settings once, when it loads.
from contracts import quiet

if __name__ == "__main__":
    quiet.quiet_tensorflow()

import tensorflow as tf

from contracts import cli, jobdir, mirror, storage, voice
from contracts import dataset as data
from contracts import policy as policy_lib
from explain import faithfulness, gradcam, pointing, render, sanity, selection

RESULTS_FILE = jobdir.EXPLAIN_RESULTS_FILE
TARGETS = ("true", "predicted")
SPLITS = ("train", "valid", "test")


@dataclasses.dataclass(frozen=True)
class ExplainConfig:
    """Everything one explanation run needs (see ``--help`` for the meaning of each field)."""

    model: str
    data_dir: str
    logdir: str
    split: str = "test"
    num_images: int = 64
    batch_size: int = 32
    method: str = gradcam.DEFAULT_METHOD
    layer: str | None = None
    seed: int = 0
    balanced: bool = False
    tolerance: float = 0.0
    target: str = "true"
    max_maps: int = 64
    panels_per_grid: int = 8
    out_dir: str | None = None
    faithfulness: bool = True
    road: bool = True
    sanity: bool = False
    sanity_layers: int = 4
    sanity_images: int = 8

    def __post_init__(self):
        gradcam.check_method(self.method)
        if self.split not in SPLITS:
            raise ValueError(f"--split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.target not in TARGETS:
            raise ValueError(f"--target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        for name in (
            "num_images",
            "batch_size",
            "max_maps",
            "panels_per_grid",
            "sanity_layers",
            "sanity_images",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.tolerance < 0:
            raise ValueError(f"--tolerance must be >= 0, got {self.tolerance}")


def _load_examples(config, predictor):
    info = data.load_metadata(config.data_dir)
    size = predictor.input_size
    if policy_lib.output_size(predictor.policy, info.image_size, predictor.crop_size) != size:
        raise ValueError(
            f"{config.model}: the model takes {size}px images but policy {predictor.policy!r} "
            f"makes {info.image_size}px dataset images into another size"
        )
    dataset = data.make_dataset(
        info,
        config.split,
        global_batch_size=256,
        policy=predictor.policy,
        crop_size=predictor.crop_size,
        features="all",
    )
    with data.translate_data_errors(info, [config.split]):
        examples = selection.select_examples(
            dataset.as_numpy_iterator(), config.num_images, config.seed, config.balanced, info.num_classes
        )
    if not examples:
        raise ValueError(f"{config.data_dir}: split {config.split!r} has no images")
    return info, examples


def _write_scalars(summary, class_names, step):
    game = summary["pointing_game"]
    scalars = {}
    if "skipped" not in game:
        scalars = {
            "pointing_game/hit_rate": game["hit_rate"],
            "pointing_game/center_baseline": game["center_baseline"],
            "pointing_game/random_baseline": game["random_baseline"],
            "energy_in_box/mean": summary["energy_in_box"],
            "energy_in_box/center_baseline": summary["energy_baselines"]["center_baseline"],
            "energy_in_box/random_baseline": summary["energy_baselines"]["random_baseline"],
        }
        for entry in summary["per_class"]:
            name = render.short_name(class_names[entry["class_index"]]).replace(" ", "_")
            scalars[f"pointing_game_per_class/{entry['class_index']:03d}_{name}"] = entry["hit_rate"]
    for metric, entry in faithfulness.scored_metrics(summary.get("faithfulness")):
        for name, key in (("", "auc"), ("_random", "random_auc"), ("_center", "center_auc")):
            scalars[f"faithfulness/{metric}_auc{name}"] = entry[key]
    for tag, value in scalars.items():
        if value is not None:
            tf.summary.scalar(tag, value, step=step)


def _write_sanity(result, images):
    """Writes the sanity check: the correlation per layers randomised (as steps) and the maps."""
    for step, value in enumerate(result["spearman"]):
        tf.summary.scalar("sanity/spearman", value, step=step)
    strip = render.sanity_strip(images, result["maps"], result["layers"], result["spearman"])
    tf.summary.image(f"sanity/{result['method']}", strip[None], step=0)


def run(config, speaker=None):
    """Explains the chosen images, writes summaries and ``explain.json``; returns the results dict.

    Progress and result lines go to ``speaker`` (a :class:`contracts.voice.Voice`;
    by default the ``explain`` voice on stderr).
    """
    speaker = speaker or voice.Voice("explain")
    predictor = jobdir.load(config.model, data_dir=config.data_dir)
    explainer = gradcam.Explainer(
        predictor.model, config.method, config.layer, config.max_maps, config.batch_size
    )
    info, examples = _load_examples(config, predictor)
    names = info.class_names
    skipped = pointing.skip_reason(info.box_count(config.split), config.split, examples["has_box"])
    game = None if skipped else pointing.PointingGame(tolerance=config.tolerance, seed=config.seed)
    scorer = (
        faithfulness.Faithfulness(predictor.predict, seed=config.seed, road=config.road)
        if config.faithfulness
        else None
    )
    count = len(examples["label"])
    speaker.say(f"{count} {config.split} images, method {config.method}, layer {explainer.layer}")
    if skipped:
        speaker.say(pointing.skipped_line(skipped))
    panels, correct = [], 0
    with speaker.progress(count, "images") as steps:
        for start in range(0, count, config.batch_size):
            batch = {key: value[start : start + config.batch_size] for key, value in examples.items()}
            probabilities = predictor.predict(batch["image"])
            predicted = probabilities.argmax(axis=1)
            correct += int((predicted == batch["label"]).sum())
            targets = batch["label"] if config.target == "true" else predicted
            maps = explainer(batch["image"], targets)
            if game is not None:
                game.add(maps, batch["box"], batch["label"], batch["has_box"])
            if scorer is not None:
                scorer.add(batch["image"], maps, targets)
            for i in range(len(maps)):
                box = batch["box"][i] if batch["has_box"][i] else None
                label, guess = int(batch["label"][i]), int(predicted[i])
                panels.append(
                    render.panel(
                        batch["image"][i], maps[i], names[label], names[guess], probabilities[i, guess], box
                    )
                )
            steps.advance(len(maps), _so_far(game, correct, start + len(maps)))
    summary = (
        pointing.skipped_summary(skipped, config.tolerance)
        if game is None
        else game.summary(class_names=names)
    )
    if scorer is not None:
        summary["faithfulness"] = scorer.summary()
    randomised = _sanity(config, predictor, explainer, examples, speaker) if config.sanity else None
    if randomised is not None:
        summary["sanity"] = sanity.summary(randomised)
    results = {
        "method": config.method,
        "layer": explainer.layer,
        "target": config.target,
        "model": config.model,
        "data_dir": config.data_dir,
        "split": config.split,
        "policy": predictor.policy,
        "input_size": predictor.input_size,
        "seed": config.seed,
        "n": count,
        "accuracy": correct / count,
        **{key: value for key, value in summary.items() if key != "n"},
        "n_with_box": summary["n"],
    }
    grids = [
        render.grid(panels[i : i + config.panels_per_grid], columns=2)
        for i in range(0, len(panels), config.panels_per_grid)
    ]
    # Summaries are written locally and uploaded: TensorFlow's own gs:// file
    # system cannot be pointed at a storage emulator (contracts.storage).
    logs = mirror.Mirror(config.logdir)
    writer = tf.summary.create_file_writer(logs.local)
    with writer.as_default():
        for k, image in enumerate(grids):
            tf.summary.image(f"{config.method}/grid_{k:03d}", image[None], step=0)
        _write_scalars(summary, names, step=0)
        if scorer is not None:
            curves = render.curves(summary["faithfulness"], label=config.method)
            tf.summary.image(f"faithfulness/{config.method}_curves", curves[None], step=0)
        if randomised is not None:
            _write_sanity(randomised, examples["image"][: config.sanity_images])
        tf.summary.text("explain/results", f"```\n{jobdir.to_json(results, indent=2)}\n```", step=0)
    writer.close()
    if config.out_dir:
        for k, image in enumerate(grids):
            render.save_png(image, storage.join(config.out_dir, f"{config.method}_grid_{k:03d}.png"))
    with open(storage.join(logs.local, RESULTS_FILE), "w") as f:
        f.write(jobdir.to_json(results, indent=2))
    logs.upload()
    _report(results, speaker)
    return results


def _sanity(config, predictor, explainer, examples, speaker):
    """Cascading randomisation of the top ``sanity_layers`` layers on the first ``sanity_images`` images."""
    images = examples["image"][: config.sanity_images]
    labels = examples["label"][: len(images)]
    targets = labels if config.target == "true" else predictor.predict(images).argmax(axis=1)
    speaker.say(f"sanity check, randomising up to {config.sanity_layers} layers from the top")
    return sanity.cascading_randomization(
        predictor.model,
        images,
        targets,
        method=config.method,
        layer=explainer.layer,
        steps=config.sanity_layers,
        seed=config.seed,
    )


def _so_far(game, correct, done):
    """The progress line's detail: the pointing game's hit rate so far, or the accuracy when skipped."""
    if game is None:
        return f"accuracy so far {correct / done:.3f}"
    hits = "n/a" if game.hit_rate is None else f"{game.hit_rate:.3f}"
    return f"pointing-game hit rate so far {hits}"


def _report(results, speaker):
    _report_faithfulness(results, speaker)
    game = results["pointing_game"]
    if "skipped" in game:  # Said once, before the images were explained.
        speaker.say(f"accuracy {results['accuracy']:.3f} on {results['n']} images")
        return
    energy = results["energy_in_box"]
    speaker.say(
        f"pointing game {game['hit_rate']:.3f} (centre baseline {game['center_baseline']:.3f}, "
        f"random {game['random_baseline']:.3f}); energy in box {energy:.3f} "
        f"(centre {results['energy_baselines']['center_baseline']:.3f}, "
        f"random {results['energy_baselines']['random_baseline']:.3f}); "
        f"accuracy {results['accuracy']:.3f} on {results['n']} images"
    )
    if game["uninformative"]:
        speaker.say(game["uninformative"])


def _report_faithfulness(results, speaker):
    parts = [
        f"{metric} {entry['auc']:.3f} (random {entry['random_auc']:.3f}, centre {entry['center_auc']:.3f})"
        for metric, entry in faithfulness.scored_metrics(results.get("faithfulness"))
    ]
    if parts:
        speaker.say("faithfulness areas: " + "; ".join(parts))
    if "sanity" in results:
        correlations = ", ".join(
            f"{layer} {value:.2f}"
            for layer, value in zip(
                results["sanity"]["layers"], results["sanity"]["spearman"][1:], strict=True
            )
        )
        speaker.say(f"sanity check, rank correlation with the original maps after randomising {correlations}")


def build_parser():
    """Returns the command-line parser."""
    parser = cli.ArgumentParser(prog="python -m explain.task", description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--model", required=True, help="Job dir (with model.keras and config.json) or a .keras file.")
    add("--data-dir", required=True, help="Dataset folder (or gs:// prefix) with metadata.json and shards.")
    add("--logdir", required=True, help="TensorBoard folder; explain.json is written here too.")
    add("--split", default="test", help=f"Split to explain: {', '.join(SPLITS)}.")
    add("--num-images", type=int, default=64, help="How many images to explain.")
    add("--batch-size", type=int, default=32, help="Images per explanation batch.")
    add("--method", default=gradcam.DEFAULT_METHOD, help=f"One of {', '.join(gradcam.METHODS)}.")
    add("--layer", help="Target layer name (default: the last spatial feature map).")
    add("--seed", type=int, default=0, help="Seed of the image choice and the random baseline.")
    add("--balanced", action="store_true", help="Spread the chosen images evenly over the classes.")
    add("--tolerance", type=float, default=0.0, help="Pointing-game tolerance in pixels.")
    add("--target", default="true", help="Class to explain: the true one or the predicted one.")
    add("--max-maps", type=int, default=64, help="Score-CAM: feature maps scored at most.")
    add("--panels-per-grid", type=int, default=8, help="Panels per TensorBoard image / PNG grid.")
    add("--out-dir", help="Also write the grids as PNG files here.")
    add(
        "--faithfulness",
        action=cli.BooleanFlag,
        default=True,
        help="Score deletion, insertion (and ROAD) areas against centre and random maps (default: on).",
    )
    add(
        "--road",
        action=cli.BooleanFlag,
        default=True,
        help="Include ROAD in the faithfulness scores (default: on).",
    )
    add("--sanity", action="store_true", help="Run the cascading-randomisation sanity check.")
    add("--sanity-layers", type=int, default=4, help="Sanity check: layers randomised, from the top.")
    add("--sanity-images", type=int, default=8, help="Sanity check: images explained at each step.")
    quiet.add_verbose_flag(parser)
    return parser


def main(argv=None):
    """Command-line entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        config = ExplainConfig(
            **{field.name: getattr(args, field.name) for field in dataclasses.fields(ExplainConfig)}
        )
        cli.check_writable_dir(config.logdir, "--logdir")
        cli.check_writable_dir(config.out_dir, "--out-dir")
        run(config)
    except ValueError as error:  # Also ModelLoadError and DataError.
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
