"""Temperature scaling and the calibration error (trainer/calibration.py) against hand-computed values;
the temperature in predict and the export's signatures; the trainer's calibration entry reproduced."""

import json
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from contracts import jobdir
from tests import events, tiers
from tests.explain import NUM_CLASSES, tiny_cnn
from tests.trainer import helpers
from trainer import calibration, evaluate, export, predict, report

# Top probabilities 0.9 (right), 0.9 (wrong), 0.5 (right), 0.7 (right).
PROBABILITIES = np.array([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.5, 0.3, 0.2], [0.2, 0.7, 0.1]])
LABELS = np.array([0, 1, 0, 1])


def _softmax(logits):
    exponentials = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exponentials / exponentials.sum(axis=-1, keepdims=True)


def _synthetic(temperature, count=20000, classes=10, seed=0):
    """Over-confident probabilities softmax(z) of labels drawn from softmax(z / temperature)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=4.0, size=(count, classes))
    truth = _softmax(logits / temperature)
    # Inverse-CDF sampling of one label per row.
    labels = (truth.cumsum(axis=-1) < rng.random((count, 1))).sum(axis=-1).clip(0, classes - 1)
    return _softmax(logits), labels


def test_ece_by_hand():
    # 5 bins: (0.8, 1] holds 0.9, 0.9 (accuracy 0.5, gap 0.4); (0.4, 0.6] holds 0.5 (accuracy 1,
    # gap 0.5); (0.6, 0.8] holds 0.7 (accuracy 1, gap 0.3). ECE = (2 * 0.4 + 0.5 + 0.3) / 4.
    assert calibration.expected_calibration_error(PROBABILITIES, LABELS, bins=5) == pytest.approx(0.4)
    confidence, accuracy, counts = calibration.reliability_bins(PROBABILITIES, LABELS, bins=5)
    np.testing.assert_array_equal(counts, [0, 0, 1, 1, 2])
    np.testing.assert_allclose(confidence, [0, 0, 0.5, 0.7, 0.9])
    np.testing.assert_allclose(accuracy, [0, 0, 1, 1, 0.5])


def test_ece_is_zero_when_confidence_matches_accuracy():
    # Ten images at confidence 0.8 in one bin, eight of them right.
    probabilities = np.tile([0.8, 0.2], (10, 1))
    labels = np.array([0] * 8 + [1] * 2)
    assert calibration.expected_calibration_error(probabilities, labels) == pytest.approx(0.0, abs=1e-12)


def test_nll_by_hand():
    expected = -(np.log(0.9) + np.log(0.05) + np.log(0.5) + np.log(0.7)) / 4
    assert calibration.negative_log_likelihood(PROBABILITIES, LABELS) == pytest.approx(expected)


def test_temperature_one_is_the_identity():
    np.testing.assert_allclose(calibration.apply_temperature(PROBABILITIES, 1.0), PROBABILITIES, atol=1e-12)


def test_temperature_by_hand_and_tf_twin():
    # softmax(log p / 2) is sqrt(p), renormalised.
    expected = np.sqrt(PROBABILITIES) / np.sqrt(PROBABILITIES).sum(axis=-1, keepdims=True)
    np.testing.assert_allclose(calibration.apply_temperature(PROBABILITIES, 2.0), expected, atol=1e-12)
    twin = calibration.apply_temperature_tf(tf.constant(PROBABILITIES, tf.float32), 2.0)
    np.testing.assert_allclose(twin.numpy(), expected, atol=1e-6)


def test_bad_temperature_is_an_error():
    with pytest.raises(ValueError, match="temperature must be > 0"):
        calibration.apply_temperature(PROBABILITIES, 0.0)


def test_fit_recovers_a_known_temperature():
    probabilities, labels = _synthetic(2.5)
    assert calibration.fit_temperature(probabilities, labels) == pytest.approx(2.5, rel=0.05)
    # Already calibrated probabilities need no temperature.
    calibrated = calibration.apply_temperature(probabilities, 2.5)
    assert calibration.fit_temperature(calibrated, labels) == pytest.approx(1.0, rel=0.05)


def test_summary_fits_on_valid_and_measures_on_test():
    valid = _synthetic(2.0, count=5000, seed=1)
    test = _synthetic(2.0, count=5000, seed=2)
    result = calibration.summary(valid, test, "test")
    assert result["split"] == "test"
    assert result["temperature"] == pytest.approx(2.0, rel=0.1)
    assert result["ece_after"] < result["ece_before"] / 3
    assert result["nll_after"] < result["nll_before"]
    # Scaling never changes the top class, so accuracy is untouched.
    calibrated = calibration.apply_temperature(test[0], result["temperature"])
    np.testing.assert_array_equal(calibrated.argmax(-1), test[0].argmax(-1))


def _job_with_temperature(root, temperature):
    """A job dir of a tiny 56px crop model whose metrics.json holds ``temperature`` (or none)."""
    keras.utils.set_random_seed(3)
    tiny_cnn(56, NUM_CLASSES, filters=(8,)).save(str(root / "model.keras"))
    (root / "config.json").write_text(json.dumps({"arch": "tiny", "policy": "crop", "crop_size": 56}))
    metrics = {} if temperature is None else {"calibration": {"temperature": temperature, "split": "test"}}
    (root / "metrics.json").write_text(json.dumps(metrics))
    return str(root)


def test_predict_applies_the_jobs_temperature(sample_raw, tmp_path, capsys):
    raw_dir, info = sample_raw
    wnid = info["wnids"][0]
    image = os.path.join(raw_dir, "train", wnid, "images", f"{wnid}_0.JPEG")
    job_dir = _job_with_temperature(tmp_path, 3.0)
    predictor = jobdir.load(job_dir)
    assert predictor.temperature == 3.0
    raw = predictor.predict(predictor.prepare([np.asarray(Image.open(image).convert("RGB"))]))[0]

    def top(*flags):
        assert predict.main(["--model", job_dir, "--json", *flags, image]) == 0
        entries = json.loads(capsys.readouterr().out)["predictions"][0]["top"]
        return [entry["index"] for entry in entries], [entry["probability"] for entry in entries]

    calibrated = calibration.apply_temperature(raw[None], 3.0)[0]
    indices, probabilities = top()
    np.testing.assert_allclose(probabilities, calibrated[indices], atol=1e-6)
    indices, probabilities = top("--calibration", "none")
    np.testing.assert_allclose(probabilities, raw[indices], atol=1e-6)
    # T = 3 flattens the softmax: the top probability drops, the order stays.
    assert calibrated.max() < raw.max() and calibrated.argmax() == raw.argmax()
    # A job dir without a fitted temperature predicts the raw softmax.
    plain = tmp_path / "plain"
    plain.mkdir()
    assert jobdir.load(_job_with_temperature(plain, None)).temperature is None


@tiers.dev("traces two serving functions (decode, resize, top-k): seconds")
def test_serving_signature_returns_calibrated_probabilities():
    keras.utils.set_random_seed(3)
    model = tiny_cnn(32, NUM_CLASSES, filters=(8,))
    pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    images = tf.stack([tf.io.encode_png(image) for image in pixels])
    names = [f"c{i}" for i in range(NUM_CLASSES)]
    options = {"wnids": names, "class_names": names, "image_size": 32, "policy": "none", "crop_size": 32}
    raw = export.serving_function(model, **options, top_k=NUM_CLASSES)(images)
    scaled = export.serving_function(model, **options, top_k=NUM_CLASSES, temperature=2.0)(images)
    np.testing.assert_array_equal(scaled["classes"].numpy(), raw["classes"].numpy())
    # softmax(log p / 2) of the full softmax: sqrt(p) renormalised over every class.
    full = np.asarray(model(pixels.astype(np.float32)))
    expected = np.sqrt(full) / np.sqrt(full).sum(axis=-1, keepdims=True)
    order = raw["classes"].numpy()
    np.testing.assert_allclose(
        scaled["probabilities"].numpy(), np.take_along_axis(expected, order, axis=-1), atol=1e-5
    )


def test_reliability_diagram_bars_are_the_bins_accuracy(tmp_path):
    before = calibration.reliability_bins(PROBABILITIES, LABELS, bins=5)
    after = calibration.reliability_bins(calibration.apply_temperature(PROBABILITIES, 2.0), LABELS, bins=5)
    image = report.reliability_image(before, after, height=100, cell=4)[0]
    assert image.shape == (100, 5 * 2 * 4, 3)
    blue = (image == [31, 119, 180]).all(axis=-1)
    # Before: bins 2 and 3 right every time (bars of 100 px, less the black row of their confidence
    # midpoint drawn across them), bin 4 half the time (50 px, its midpoint row 10 above it); 0, 1 empty.
    assert [int(blue[:, 8 * b : 8 * b + 4].any(axis=1).sum()) for b in range(5)] == [0, 0, 99, 99, 50]
    assert (image[50, 16:24] == 0).all() and (image[10, 32:40] == 0).all()
    summary = {"temperature": 2.0, "split": "test"}
    report.write_reliability_summary(str(tmp_path), PROBABILITIES, LABELS, summary, step=4)
    images = events.read_events(str(tmp_path / "evaluation"), "images")
    assert list(images) == ["reliability/test"] and list(images["reliability/test"]) == [4]
    png = images["reliability/test"][4][2]
    assert tf.io.decode_png(png).shape == (120, 15 * 2 * 8, 3)


def test_the_run_fits_a_temperature_that_evaluate_reproduces(plateau_job, tmp_path, capsys):
    # Evaluate writes its summaries into the job dir: a copy, the shared run stays read-only.
    job_dir, data_dir = str(tmp_path / "job"), plateau_job["data_dir"]
    shutil.copytree(plateau_job["job_dir"], job_dir)
    entry = helpers.read_job_json(job_dir, "metrics.json")["calibration"]
    assert entry["split"] == "test" and entry["temperature"] > 0
    assert report.calibration_line(entry) in plateau_job["stderr"]
    assert jobdir.load(job_dir).temperature == entry["temperature"]

    def evaluated(split, *flags):
        output = str(tmp_path / f"{split}{len(flags)}.json")
        argv = ["--model", job_dir, "--data-dir", data_dir, "--split", split, "--output", output, *flags]
        assert evaluate.main(argv) == 0, capsys.readouterr().err
        with open(output) as f:
            return json.load(f)["calibration"]

    # Measured on test with the same temperature: trainer.evaluate gives the run's numbers.
    test = evaluated("test")
    assert test["temperature"] == entry["temperature"]
    for key in ("ece_before", "ece_after", "nll_before", "nll_after"):
        assert test[key] == pytest.approx(entry[key], abs=1e-5), key
    # Fitted on valid: no temperature gives valid a lower NLL than T (T = 1 among them).
    valid = evaluated("valid")
    assert valid["nll_after"] <= valid["nll_before"] + 1e-9
    raw = evaluated("test", "--calibration", "none")
    assert raw == {"temperature": None, "ece_before": test["ece_before"], "nll_before": test["nll_before"]}
    images = events.read_events(os.path.join(job_dir, "logs", "evaluation"), "images")
    assert "reliability/test" in images


def test_unknown_calibration_mode_is_an_error():
    with pytest.raises(ValueError, match="--calibration must be one of"):
        evaluate.EvaluateConfig(model="m", data_dir="d", calibration="platt")
    with pytest.raises(ValueError, match="--calibration must be one of"):
        predict.PredictConfig(model="m", images=("a.jpg",), calibration="platt")
