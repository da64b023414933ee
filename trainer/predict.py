"""Top-5 predictions for images and folders: ``python -m trainer.predict --model J img.jpg photos/ gs://b/x/``.

Inputs are image files (local or ``gs://``), folders and ``gs://`` prefixes
(:func:`trainer.predict_inputs.list_images`: every file below them, at any depth, whose name ends
with an image extension of :data:`preprocessing.layouts.IMAGE_EXTENSIONS` in
any letter case; hidden and system files left out, as the preprocessing job
lists a class-per-folder tree), in the order given, each folder sorted. Each
file is read with the preprocessing job's limits (:mod:`trainer.predict_inputs`:
regular files only, a FIFO or device refused unread; a size cap; a pixel cap).

``--model`` takes a job dir ``J`` (its ``model.keras`` and ``config.json``
give the model and its evaluation transform), a ``.keras`` file (the
transform is inferred: images larger than the model input are centre-cropped)
or a SavedModel export folder such as ``J/export`` (it holds ``saved_model.pb``).
For a job dir or a ``.keras`` file every image is decoded with PIL (JPEG, PNG,
grayscale, ...), made the dataset's square size by the dataset's resize policy
(:func:`contracts.resize.resize`, as the preprocessing job made its records;
``crop`` when no metadata.json names one), then given the evaluation transform,
so the model sees what it saw in evaluation.
Class names come from ``--classes``, ``--data-dir``'s metadata.json,
``J/classes.json`` or the metadata.json of the data dir named in
``J/config.json``, in that order; a list of another length than the model's
classes is refused (exit code 2). An export does all of that itself: the bytes
go through its signatures (``serving_default``; ``explain`` for ``--gradcam``,
Grad-CAM only), which name the classes and return at most 5 of them.

Prints a table per image (``--json``: one JSON document); ``--output
preds.csv`` or ``preds.jsonl`` writes one row per image instead, batch by
batch as the images are predicted (:mod:`trainer.predict_output` describes
the columns), so memory does not grow with the number of images. ``--gradcam
DIR`` saves an original | heatmap | overlay panel per image. An unreadable
image is reported on stderr (and as an error row) and the others still run
(exit code 1); bad arguments (a ``--gradcam`` folder that is a file included)
end with one line on stderr and exit code 2.
"""

import dataclasses
import sys

import numpy as np

# First, before anything imports TensorFlow: it reads its log settings once, when it loads.
from contracts import quiet

if __name__ == "__main__":
    quiet.quiet_tensorflow()

from contracts import cli, jobdir, storage, voice
from contracts import images as rgb_images
from trainer import calibration, predict_inputs, predict_output

TOP_K = 5
# Images read and predicted together: bounds the memory of a call over many files.
BATCH_SIZE = 64


def decode_image(data):
    """Decodes image bytes of any PIL format to uint8 RGB ``[H, W, 3]``.

    The conversion is the preprocessing job's (:func:`contracts.images.to_rgb`:
    16-bit scaled, transparency composited on white), so a file gives the
    model the pixels its training record held.

    Raises:
        ValueError: For a header announcing more than ``contracts.images.MAX_PIXELS``
            pixels (checked before decoding) or a mode with no RGB conversion.
        OSError: For bytes PIL cannot decode.
    """
    with rgb_images.open_image(data) as image:
        image.load()
        return rgb_images.to_rgb(image)


def top_k(probabilities, k=TOP_K):
    """Returns ``[(index, probability)]`` of the ``k`` most probable classes, best first."""
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [(int(i), float(probabilities[i])) for i in order]


def build_parser():
    """Returns the command-line parser."""
    parser = cli.ArgumentParser(prog="python -m trainer.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "images", nargs="+", help="Image files, folders (every image below them) or gs:// URIs and prefixes."
    )
    parser.add_argument(
        "--model",
        required=True,
        help="Job dir (with model.keras), a .keras file or a SavedModel export folder.",
    )
    parser.add_argument("--data-dir", help="Dataset folder whose metadata.json names the classes.")
    parser.add_argument(
        "--classes", help="Classes file: JSON list, metadata-style JSON, or one name per line."
    )
    parser.add_argument("--top-k", type=int, default=TOP_K, help="Number of classes to print.")
    parser.add_argument("--json", action="store_true", help="Print one JSON document instead of tables.")
    parser.add_argument(
        "--output",
        metavar="FILE",
        help="Write one row per image to FILE.csv or FILE.jsonl (local or gs://) instead of printing.",
    )
    parser.add_argument(
        "--gradcam", metavar="DIR", help="Save an original|heatmap|overlay panel per image here."
    )
    parser.add_argument("--method", default="gradcam", help="Explanation method for --gradcam.")
    parser.add_argument(
        "--calibration",
        default="temperature",
        choices=calibration.MODES,
        help="temperature: a job dir's probabilities scaled by its fitted temperature (default); none: "
        "the raw softmax. An export serves what it was exported with.",
    )
    quiet.add_verbose_flag(parser)
    return parser


@dataclasses.dataclass(frozen=True)
class PredictConfig:
    """The resolved command line of :func:`main`."""

    model: str
    images: tuple
    data_dir: str | None = None
    classes: str | None = None
    top_k: int = TOP_K
    json: bool = False
    gradcam: str | None = None
    method: str = "gradcam"
    output: str | None = None
    calibration: str = "temperature"

    def __post_init__(self):
        if self.top_k < 1:
            raise ValueError(f"--top-k must be >= 1, got {self.top_k}")
        if self.calibration not in calibration.MODES:
            raise ValueError(f"--calibration must be one of {calibration.MODES}, got {self.calibration!r}")
        if self.output:
            predict_output.output_format(self.output)
            if self.json:
                raise ValueError("--json prints to stdout, --output writes a file: give one of them")


def _checked_bytes(content):
    """Returns ``content`` after refusing a header that announces too many pixels."""
    with rgb_images.open_image(content):
        pass
    return content


def _top_entries(indices, names, probabilities, k):
    """The ``top`` list of one result: rank, index, class and probability, best first."""
    rows = zip(indices, names, probabilities, strict=True)
    return [
        {"rank": rank, "index": int(index), "class": name, "probability": float(probability)}
        for rank, (index, name, probability) in enumerate(rows, start=1)
    ][:k]


def _batches(paths, speaker):
    """Yields ``paths`` :data:`BATCH_SIZE` at a time; over more than one batch, counts them on ``speaker``.

    A single batch (the common one-image call) stays silent: its answer comes at once.
    """
    batch_size = BATCH_SIZE
    steps = speaker.progress(len(paths), "images") if len(paths) > batch_size else None
    for start in range(0, len(paths), batch_size):
        batch = paths[start : start + batch_size]
        yield batch
        if steps:
            steps.advance(len(batch))
    if steps:
        steps.close()


def _error_rows(chunk, rows, failures):
    """The rows of ``chunk`` in its order: its prediction, or ``{"image", "error"}`` for a failed file."""
    return [rows[path] if path in rows else {"image": path, "error": failures[path]} for path in chunk]


def _keras_predictor(config, names, err):
    """Loads a job dir or ``.keras`` file; returns ``predict(chunk) -> rows`` for a batch of paths.

    The decoded images live only while their batch is predicted.
    """
    predictor = jobdir.load(config.model, data_dir=config.data_dir, classes=config.classes)
    explainer = None
    if config.gradcam:
        from explain import gradcam

        explainer = gradcam.Explainer(predictor.model, method=config.method)

    def predict_chunk(chunk):
        images, failures = predict_inputs.read_files(chunk, decode_image)
        _report(failures, err)
        paths = [p for p in chunk if p in images]
        rows = {}
        if not paths:
            return _error_rows(chunk, rows, failures)
        batch = predictor.prepare([images[p] for p in paths])
        probabilities = predictor.predict(batch)
        if config.calibration == "temperature" and predictor.temperature is not None:
            probabilities = calibration.apply_temperature(probabilities, predictor.temperature)
        maps = explainer(batch, probabilities.argmax(axis=1)) if explainer else [None] * len(paths)
        for path, image, heatmap, probs in zip(paths, batch, maps, probabilities, strict=True):
            indices = [i for i, _ in top_k(probs, config.top_k)]
            top = _top_entries(
                indices, [predictor.class_name(i) for i in indices], probs[indices], config.top_k
            )
            rows[path] = {"image": path, "top": top}
            if explainer:
                rows[path]["gradcam"] = storage.join(config.gradcam, names[path])
                predict_output.save_panel(
                    rows[path]["gradcam"], image, heatmap, top[0]["class"], top[0]["probability"]
                )
        return _error_rows(chunk, rows, failures)

    return predict_chunk


def _check_export_options(config, model):
    from trainer import export

    if config.classes or config.data_dir:
        raise ValueError(
            "--classes and --data-dir do not apply to a SavedModel export: its signatures name the classes"
        )
    if config.gradcam:
        if config.method != "gradcam":
            raise ValueError(
                f"a SavedModel export explains with gradcam only, not {config.method!r}; "
                "give the job dir for other methods"
            )
        for name in (export.EXPLAIN_SIGNATURE, export.PREPROCESS_SIGNATURE):
            if not model.has(name):
                raise ValueError(f"{model.path}: the SavedModel has no {name!r} signature; export it again")


def _readable_by_export(model, paths, err):
    """Reads ``paths`` and checks each alone through the export's cheapest signature.

    Returns:
        ``({path: bytes}, {path: pixels or None}, {path: message})``: a file the export
        cannot decode then fails alone instead of failing its whole batch.
    """
    from trainer import export

    data, failures = predict_inputs.read_files(paths, _checked_bytes)
    check = export.PREPROCESS_SIGNATURE if model.has(export.PREPROCESS_SIGNATURE) else export.SIGNATURE
    pixels = {}
    for path in list(data):
        try:
            pixels[path] = model(check, [data[path]]).get("pixels", [None])[0]
        except export.ImageDecodeError as error:
            failures[path] = f"cannot read image ({error})"
            del data[path]
    _report(failures, err)
    return data, pixels, failures


def _export_predictor(config, names, err):
    """Loads a SavedModel export; returns ``predict(chunk) -> rows`` through its signatures."""
    from trainer import export

    model = export.LoadedExport(config.model)
    _check_export_options(config, model)
    signature = export.EXPLAIN_SIGNATURE if config.gradcam else export.SIGNATURE

    def predict_chunk(chunk):
        data, pixels, failures = _readable_by_export(model, chunk, err)
        paths = [p for p in chunk if p in data]
        rows = {}
        if not paths:
            return _error_rows(chunk, rows, failures)
        outputs = model(signature, [data[p] for p in paths])
        for row, path in enumerate(paths):
            classes = export.decode_names(outputs["names"][row])
            top = _top_entries(outputs["classes"][row], classes, outputs["probabilities"][row], config.top_k)
            rows[path] = {"image": path, "top": top}
            if config.gradcam:
                rows[path]["gradcam"] = storage.join(config.gradcam, names[path])
                best = top[0]
                heatmap = outputs["heatmap"][row]
                predict_output.save_panel(
                    rows[path]["gradcam"], pixels[path], heatmap, best["class"], best["probability"]
                )
        return _error_rows(chunk, rows, failures)

    return predict_chunk


def _report(failures, err):
    for path, message in failures.items():
        print(f"error: {path}: {message}", file=err)


def run(config, out=None, err=None):
    """Predicts every image of ``config``; returns the exit code (1 when an image failed).

    Tables or JSON go to ``out``, or the rows to ``config.output`` batch by
    batch; one line per unreadable image goes to ``err`` (default: the current
    ``sys.stdout`` and ``sys.stderr``).
    """
    out = out or sys.stdout
    err = err or sys.stderr
    # Imported here, as Keras is for the other paths: --help needs no TensorFlow.
    from trainer import export

    speaker = voice.Voice("predict", err)
    paths = predict_inputs.list_images(config.images, speaker)
    names = predict_output.panel_names(paths) if config.gradcam else {}
    loader = _export_predictor if export.is_export(config.model) else _keras_predictor
    predict_chunk = loader(config, names, err)
    batches = (predict_chunk(chunk) for chunk in _batches(paths, speaker))
    if config.output:
        with predict_output.open_rows(config.output, config.top_k, gradcam=bool(config.gradcam)) as writer:
            for rows in batches:
                writer.write(rows)
        speaker.say(f"{writer.images} rows, {writer.errors} of them errors, written to {config.output}")
        return 1 if writer.errors else 0
    rows = [row for batch in batches for row in batch]
    if config.json:
        predict_output.write_document(rows, out)
    else:
        predict_output.write_tables(rows, out)
    return 1 if any("error" in row for row in rows) else 0


def main(argv=None):
    """Command-line entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        config = PredictConfig(
            model=args.model,
            images=tuple(args.images),
            data_dir=args.data_dir,
            classes=args.classes,
            top_k=args.top_k,
            json=args.json,
            gradcam=args.gradcam,
            method=args.method,
            output=args.output,
            calibration=args.calibration,
        )
        cli.check_writable_dir(config.gradcam, "--gradcam")
        predict_output.check_output_file(config.output)
        return run(config)
    except ValueError as error:  # ModelLoadError, unknown method, bad option values.
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
