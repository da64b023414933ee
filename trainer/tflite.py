"""TFLite files of a trained model: ``python -m trainer.export --model J --format tflite --output FILE``.

``--model`` takes a job dir ``J`` (its ``model.keras`` and ``config.json``) or a
``.keras`` file, read by :func:`contracts.jobdir.load`, the reader that
``trainer.predict`` and ``trainer.evaluate`` use. The file is written by
TensorFlow's own converter (``tf.lite.TFLiteConverter``, from a SavedModel that
Keras' ``ExportArchive`` writes, the route of Keras' own LiteRT export) and
measured in TensorFlow's own interpreter.

Both formats take ``images``: uint8 RGB ``[N, S, S, 3]`` at the dataset's image
size ``S``, already made square by the dataset's resize policy
(:func:`contracts.resize.resize`, ``metadata.json``'s ``resize``; TFLite has no
JPEG decoder, so decoding and resizing stay with the caller). Inside the file
the policy's evaluation transform (:func:`contracts.policy.eval_transform`:
``crop`` cuts the centre square) and the model's own input scaling follow, as
in the SavedModel export's signatures. They return ``probabilities``: float32
``[N, C]``, the softmax in label order.

* ``tflite``: float32 weights and arithmetic.
* ``tflite-int8``: full-integer quantization (``tf.lite.Optimize.DEFAULT``,
  :data:`TFLITE_BUILTINS_INT8` only, a representative dataset of
  ``--calibration-images`` train images drawn through
  :func:`contracts.dataset.make_dataset`). The uint8 input's quantization is
  fixed to scale 1, zero point 0, so a pixel is its own value (a calibrated
  range would make the input scale depend on the brightest calibration
  image); every operation runs on int8, and the softmax is dequantized to
  float32 at the end (its resolution is int8's: 1/256).

The command then measures top-1 on the test split (``valid`` when the dataset
has no test images) of the converted model in the interpreter next to the Keras
model's on the same images, prints both and writes them beside the file in
``FILE.json``: ``format``, ``keras_top1``, ``tflite_top1``, ``images``,
``size_bytes``, ``split``, ``agreement`` (images whose top-1 both agree on),
``input`` and ``output``. A usage error ends with one ``error:`` line and exit code 2.
"""

import dataclasses
import os
import sys
import tempfile
import warnings

import keras
import numpy as np
import tensorflow as tf

from contracts import cli, dataset, jobdir, quiet, storage, voice
from contracts import policy as policy_lib
from trainer import evaluation

FORMATS = ("tflite", "tflite-int8")
INT8 = "tflite-int8"
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
# Pixels are 8-bit: the int8 file's input range, fixed rather than calibrated.
PIXEL_MAX = 255.0
CALIBRATION_IMAGES = 256
BATCH_SIZE = 64
# Seed of the calibration images' shuffle: the same file from the same job dir and data.
CALIBRATION_SEED = 0
RESULTS_SUFFIX = ".json"
# What the command's lines start with (python -m trainer.export).
COMMAND = "export"


def probabilities_function(model, *, image_size, policy, crop_size, quantized=False):
    """Returns the ``tf.function`` a TFLite file is converted from: images -> ``{"probabilities"}``.

    Args:
        model: The single-output Keras model (raw pixels in [0, 255] -> softmax).
        image_size: Side ``S`` of the dataset's images, the function's input.
        policy: Augmentation policy whose evaluation transform is applied.
        crop_size: Crop side of the ``crop`` policy.
        quantized: Take float32 pixels whose range is pinned to [0, 255] by a fake-quantization op,
            which the int8 converter turns into the uint8 input's scale 1 and zero point 0; else uint8.
    """
    dtype = tf.float32 if quantized else tf.uint8
    spec = tf.TensorSpec([None, image_size, image_size, 3], dtype, name=INPUT_NAME)

    @tf.function(input_signature=[spec], autograph=False)
    def probabilities(images):
        pixels = tf.cast(images, tf.float32)
        if quantized:
            pixels = tf.quantization.fake_quant_with_min_max_args(pixels, min=0.0, max=PIXEL_MAX, num_bits=8)
        pixels = policy_lib.eval_transform(policy, pixels, image_size, crop_size)
        return {OUTPUT_NAME: tf.cast(model(pixels, training=False), tf.float32)}

    return probabilities


def convert(model, *, image_size, policy, crop_size, representative=None):
    """Converts ``model`` with its evaluation transform into the bytes of a TFLite file.

    Args:
        model: The single-output float32 Keras model.
        image_size, policy, crop_size: As :func:`probabilities_function`.
        representative: For the int8 file, a callable returning an iterable of float32
            ``[1, S, S, 3]`` pixel batches (the converter's ``representative_dataset``);
            ``None`` converts to float.

    Raises:
        ValueError: When the int8 file's input did not get the pixels' own scale.
    """
    quantized = representative is not None
    function = probabilities_function(
        model, image_size=image_size, policy=policy, crop_size=crop_size, quantized=quantized
    )
    with tempfile.TemporaryDirectory() as folder:
        # Keras variables traced into a bare tf.function reach the converter as resource variables
        # the interpreter cannot read (NaN or READ_VARIABLE errors); the archive's SavedModel freezes.
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serve", function)
        archive.write_out(folder, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(folder)
        if quantized:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = representative
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.uint8
            converter.inference_output_type = tf.float32
        content = converter.convert()
    if quantized:
        scale, zero_point = Runner(content).input_details["quantization"]
        if (scale, zero_point) != (1.0, 0):
            raise ValueError(f"the int8 input got scale {scale} and zero point {zero_point}, not 1 and 0")
    return content


def interpreter_class():
    """The interpreter: LiteRT's (``ai_edge_litert``) where installed, else ``tf.lite.Interpreter``."""
    try:
        from ai_edge_litert import interpreter as litert
    except ImportError:
        return tf.lite.Interpreter
    return litert.Interpreter


class Runner:
    """A TFLite file in the interpreter, called with uint8 ``[N, S, S, 3]`` batches.

    Args:
        content: The file's bytes.
        num_threads: Interpreter threads (``None``: the interpreter's default).
    """

    def __init__(self, content, num_threads=None):
        with warnings.catch_warnings():
            # TensorFlow 2.21 warns that tf.lite.Interpreter moves to LiteRT; it is the one here.
            warnings.filterwarnings("ignore", message=r".*tf\.lite\.Interpreter is deprecated")
            self.interpreter = interpreter_class()(model_content=content, num_threads=num_threads)
        self.input_details = self.interpreter.get_input_details()[0]
        self.output_details = self.interpreter.get_output_details()[0]
        self._shape = None

    def tensor_types(self):
        """The dtype names of every tensor of the file (a full-integer file computes in int8)."""
        return sorted({np.dtype(detail["dtype"]).name for detail in self.interpreter.get_tensor_details()})

    def __call__(self, images):
        """Returns float32 probabilities ``[N, C]`` of a uint8 batch."""
        images = np.asarray(images, dtype=self.input_details["dtype"])
        if images.shape != self._shape:
            self.interpreter.resize_tensor_input(self.input_details["index"], images.shape)
            self.interpreter.allocate_tensors()
            self._shape = images.shape
        self.interpreter.set_tensor(self.input_details["index"], images)
        self.interpreter.invoke()
        return np.array(self.interpreter.get_tensor(self.output_details["index"]), dtype=np.float32)


def calibration_images(info, count, seed=CALIBRATION_SEED):
    """Returns the int8 converter's ``representative_dataset``: ``count`` shuffled train images.

    Each is a float32 ``[1, S, S, 3]`` batch at the dataset's size, as the records hold it (no
    augmentation, no crop: the file crops itself).
    """

    def images():
        stream = dataset.make_dataset(
            info, "train", global_batch_size=1, training=True, repeat=False, seed=seed
        )
        for batch, _ in stream.take(count):
            yield [batch.numpy()]

    return images


def keras_probabilities(predictor, images):
    """The Keras model's probabilities of uint8 ``[N, S, S, 3]`` images (the evaluation transform first)."""
    pixels = policy_lib.eval_transform(
        predictor.policy, images.astype(np.float32), predictor.image_size, predictor.crop_size
    )
    return np.asarray(predictor.model(pixels, training=False), dtype=np.float32)


def measure(runner, predictor, info, split, progress=None, batch_size=BATCH_SIZE):
    """Top-1 of the TFLite file and of the Keras model over one split, on the same images.

    Returns:
        ``{"keras_top1", "tflite_top1", "agreement", "images"}``.
    """
    stream = dataset.make_dataset(info, split, global_batch_size=batch_size, policy="none")
    labels, keras_top, tflite_top = [], [], []
    with dataset.translate_data_errors(info, splits=(split,)):
        for images, batch_labels in stream:
            pixels = images.numpy().astype(np.uint8)  # The records' 8-bit pixels, as float32.
            keras_top.append(keras_probabilities(predictor, pixels).argmax(axis=1))
            tflite_top.append(runner(pixels).argmax(axis=1))
            labels.append(batch_labels.numpy())
            if progress is not None:
                progress.advance(len(pixels))
    labels, keras_top, tflite_top = (np.concatenate(values) for values in (labels, keras_top, tflite_top))
    return {
        "keras_top1": float(np.mean(keras_top == labels)),
        "tflite_top1": float(np.mean(tflite_top == labels)),
        "agreement": float(np.mean(keras_top == tflite_top)),
        "images": len(labels),
    }


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """The resolved command line of :func:`main`."""

    model: str
    format: str
    output: str
    data_dir: str | None = None
    calibration_images: int = CALIBRATION_IMAGES

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.calibration_images < 1:
            raise ValueError(f"--calibration-images must be >= 1, got {self.calibration_images}")


def _data_dir(config):
    if config.data_dir:
        return config.data_dir
    model = config.model.rstrip("/")
    found = None if model.endswith(".keras") else jobdir.read_config(model).get("data_dir")
    if not found:
        raise ValueError(f"{config.model}: no data dir in its {jobdir.CONFIG_FILE}; give --data-dir")
    return found


def run(config, out=None):
    """Converts, measures and writes ``config.output`` and its JSON; returns the JSON's dict.

    Raises:
        ValueError: Bad input (a missing model or dataset, a model that does not fit the dataset).
    """
    out = out or sys.stdout
    speaker = voice.Voice(COMMAND)
    if not storage.is_gcs(config.output):
        cli.check_writable_dir(os.path.dirname(os.path.abspath(config.output)), "--output")
    data_dir = _data_dir(config)
    info = dataset.load_metadata(data_dir)
    predictor = jobdir.load(config.model, data_dir=data_dir)
    num_classes = int(predictor.model.outputs[0].shape[-1])
    if num_classes != info.num_classes or predictor.image_size != info.image_size:
        raise ValueError(
            f"{config.model}: the model takes {predictor.image_size}px images of {num_classes} classes, "
            f"the dataset {data_dir} has {info.image_size}px images of {info.num_classes}"
        )
    representative, detail = None, ""
    if config.format == INT8:
        available = info.split_counts.get("train", 0)
        if available < 1:
            raise ValueError(f"{data_dir}: no train images to calibrate the int8 quantization on")
        representative = calibration_images(info, config.calibration_images)
        detail = f", calibrated on {min(config.calibration_images, available)} train images"
    speaker.say(f"converting {config.model} to {config.format}{detail}")
    content = convert(
        predictor.model,
        image_size=predictor.image_size,
        policy=predictor.policy,
        crop_size=predictor.crop_size,
        representative=representative,
    )
    split = evaluation.final_splits(info)[-1]
    with speaker.progress(info.split_counts[split], f"{split} images") as progress:
        runner = Runner(content)
        scores = measure(runner, predictor, info, split, progress)
    result = {
        "format": config.format,
        **scores,
        "split": split,
        "size_bytes": len(content),
        "model": config.model,
        "data_dir": data_dir,
        "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": [None, info.image_size, info.image_size, 3]},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": [None, info.num_classes]},
    }
    storage.write_bytes(config.output, content)
    results = config.output + RESULTS_SUFFIX
    storage.write_bytes(results, (jobdir.to_json(result, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    out.write(
        f"export: {config.format} top-1 {scores['tflite_top1']:.4f}, Keras {scores['keras_top1']:.4f} "
        f"on {scores['images']} {split} images; {config.output} ({len(content)} bytes)\n"
    )
    return result


def build_parser():
    """Returns the command-line parser."""
    parser = cli.ArgumentParser(prog="python -m trainer.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="Job dir (with model.keras) or a .keras file.")
    parser.add_argument("--format", required=True, choices=FORMATS, help="Float or full-integer int8.")
    parser.add_argument("--output", required=True, help="The .tflite file; FILE.json gets the measurements.")
    parser.add_argument(
        "--data-dir", help="Dataset folder with metadata.json (default: the job's config.json data_dir)."
    )
    parser.add_argument(
        "--calibration-images",
        type=int,
        default=CALIBRATION_IMAGES,
        help=f"Train images the int8 quantization is calibrated on (default {CALIBRATION_IMAGES}).",
    )
    quiet.add_verbose_flag(parser)
    return parser


def main(argv=None):
    """Command-line entry point; returns the exit code (0 done, 2 bad input)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # A usage error (its one line already printed) or --help.
        return stop.code
    try:
        config = ExportConfig(
            model=args.model,
            format=args.format,
            output=args.output,
            data_dir=args.data_dir,
            calibration_images=args.calibration_images,
        )
        run(config)
    except (ValueError, OSError) as error:  # DataError, ModelLoadError, OutputPathError, storage.
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
