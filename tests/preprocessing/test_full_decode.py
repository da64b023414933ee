"""Every record the Beam job writes decodes with the trainer's decoder (issue 27, item 3).

A JPEG with its headers and an end marker but no scan data passed the job's
fast path (a complete ``S x S`` JPEG keeps its bytes) and then failed every
training run in ``decode_jpeg``. The job now decodes every kept file in full
with :func:`contracts.schema.decode_jpeg` before it writes it. The hostile
files are cut from a photo of :mod:`preprocessing.sample`.
"""

import io
import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from contracts import dataset, schema
from preprocessing import images, sample, task
from tests.preprocessing import shards

SOS = b"\xff\xda"
SHARDS = ["--num-shards-train", "2", "--num-shards-valid", "1", "--num-shards-test", "1"]
SHARDS += ["--num-shards-unlabeled", "1"]


def _photo(seed=0):
    image, _ = sample.render_image(0, np.random.default_rng(seed))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def no_scan_data(photo):
    """The photo's headers (tables, frame) and an end marker, without the scan."""
    return photo[: photo.index(SOS)] + images.JPEG_EOI


def random_scan_data(photo, seed=1):
    """The photo's headers and scan header, then random entropy-coded bytes (no 0xFF) and an end marker."""
    start = photo.index(SOS)
    header_end = start + 2 + int.from_bytes(photo[start + 2 : start + 4], "big")
    scan = np.random.default_rng(seed).integers(0, 255, len(photo) - header_end - 2, dtype=np.uint8)
    return photo[:header_end] + scan.tobytes() + images.JPEG_EOI


def truncated_scan(photo):
    """The photo cut in the middle of its scan, with an end marker appended."""
    return photo[: len(photo) // 2] + images.JPEG_EOI


def _kept(data):
    return images.validate_image(data, 64, decode=False)


def test_jpeg_without_scan_data_is_refused():
    data = no_scan_data(_photo())
    # The case is real: the header walk calls it a complete 64x64 JPEG, and the trainer's decoder fails.
    assert images.jpeg_header(data) == (64, 64, 3) and data.endswith(images.JPEG_EOI)
    with pytest.raises(tf.errors.InvalidArgumentError):
        schema.decode_jpeg(data)
    # Refused without a decoder (no start-of-scan marker), on the fast path and on PIL's.
    for variant in (data, data + b"trailing bytes"):
        with pytest.raises(images.BadImageError, match=r"^truncated or corrupt JPEG: no scan data"):
            images.validate_image(variant, 64, decode=False)


def test_jpeg_the_trainers_decoder_cannot_read_is_refused():
    photo = _photo()
    cut = photo[: len(photo) // 2]  # A truncated scan without an end marker: PIL's header path.
    with pytest.raises(tf.errors.InvalidArgumentError):
        schema.decode_jpeg(cut)
    assert _kept(cut).data == cut, "the header checks alone would keep it"
    with pytest.raises(images.BadImageError, match=r"^truncated or corrupt JPEG: the trainer's decoder"):
        images.validate_image(cut, 64)


def test_decode_failures_name_each_bad_file_of_a_batch():
    photo = _photo()
    good = [_kept(_photo(seed)) for seed in range(5)]
    bad = _kept(photo[: len(photo) // 2])
    batch = [good[0], bad, *good[1:], bad]
    assert images.decode_failures(batch) == {1: images.UNDECODABLE, 6: images.UNDECODABLE}
    assert images.decode_failures(good) == {} and images.decode_failures([]) == {}
    # A header that announces another size than the scan decodes to.
    liar = good[0]._replace(width=65)
    assert images.decode_failures([liar]) == {0: "JPEG decodes to another size than its header's 65x64"}


@pytest.mark.parametrize("make", [random_scan_data, truncated_scan])
def test_corrupt_scan_that_still_decodes_is_kept_a_documented_limit(make):
    # Entropy-coded data has no checksum: random bytes, or a scan cut short before an end marker,
    # decode in TensorFlow and in PIL alike (libjpeg only warns), to noise or to a grey remainder.
    # Such a file is a valid image (docs/preprocessing.md, "Bad input").
    data = make(_photo())
    kept = images.validate_image(data, 64)
    assert kept.data == data and kept.reencoded_from is None
    assert schema.decode_jpeg(data).shape == (64, 64, 3)
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert pixels.shape == (64, 64, 3)


def _shard(tmp_path, names):
    rejected, summary = shards.convert_shard(tmp_path, names)
    return {r["path"].rsplit("/", 1)[-1]: r["reason"] for r in rejected}, summary


def test_the_job_decodes_kept_files_a_batch_at_a_time(tmp_path, monkeypatch):
    folder = tmp_path / "raw" / "train" / "n1" / "images"
    folder.mkdir(parents=True)
    photo = _photo()
    names = [f"{k:03d}.JPEG" for k in range(images.DECODE_BATCH + 20)]
    for k, name in enumerate(names):
        (folder / name).write_bytes(photo[: len(photo) // 2] if k in (3, 270) else _photo(k))
    calls = []
    real = images.decode_failures
    monkeypatch.setattr(images, "decode_failures", lambda kept: calls.append(len(kept)) or real(kept))
    rejected, summary = _shard(tmp_path, names)
    assert calls == [images.DECODE_BATCH, 20], "one call per batch, not per file"
    assert rejected == {"003.JPEG": images.UNDECODABLE, "270.JPEG": images.UNDECODABLE}
    assert summary.count == len(names) - 2

    def broken(kept):  # A failure of the batch call itself: each file is decoded alone instead.
        if len(kept) > 1:
            raise RuntimeError("batch failed")
        if kept[0].data == _photo(5):
            raise RuntimeError("decoder bug")
        return real(kept)

    monkeypatch.setattr(images, "decode_failures", broken)
    rejected, summary = _shard(tmp_path, names[:10])
    assert rejected == {
        "003.JPEG": images.UNDECODABLE,
        "005.JPEG": "unexpected error: RuntimeError: decoder bug",
    }
    assert summary.count == 8


def test_every_written_record_decodes_with_the_trainers_decoder(tmp_path, capsys):
    raw = tmp_path / "raw"
    spec = sample.SampleSpec(classes=2, train_per_class=10, val_per_class=2, test_images=2, seed=4)
    info = sample.write_sample_dataset(str(raw), spec)
    wnid = info["wnids"][0]
    folder = raw / "train" / wnid / "images"
    photo = (folder / f"{wnid}_0.JPEG").read_bytes()
    (folder / "no_scan.JPEG").write_bytes(no_scan_data(photo))
    (folder / "noise.JPEG").write_bytes(random_scan_data(photo))
    (folder / "cut.JPEG").write_bytes(photo[: len(photo) // 2])
    (raw / "test" / "images" / "no_scan.JPEG").write_bytes(no_scan_data(photo))
    out = tmp_path / "out"
    args = ["--raw-dir", str(raw), "--output-dir", str(out), "--max-reject-fraction", "0.2", *SHARDS]
    code = task.run(args)
    assert code == 0, capsys.readouterr().err
    rejected = [json.loads(line) for line in (out / schema.REJECTED_FILE).read_text().splitlines()]
    assert [(r["path"], r["reason"]) for r in rejected] == [
        ("test/images/no_scan.JPEG", images.NO_SCAN),
        (f"train/{wnid}/images/cut.JPEG", images.UNDECODABLE),
        (f"train/{wnid}/images/no_scan.JPEG", images.NO_SCAN),
    ]
    # The trainer's own reader and decoder, over every split: before, this raised on the first bad record.
    data = dataset.load_metadata(str(out))
    dataset.verify_data(data)
    decoded = kept = 0
    for split, count in data.split_counts.items():
        batches = dataset.make_dataset(data, split, global_batch_size=8, features="all")
        names = [name for batch in batches for name in batch["filename"].numpy()]
        assert len(names) == count, split
        decoded += len(names)
        kept = kept if split not in ("train", "valid") else kept + names.count(b"noise.JPEG")
    assert kept == 1, "random scan data decodes: kept as a noise image (the documented limit)"
    assert decoded == data.metadata["inputs"]["written"] == data.metadata["inputs"]["found"] - 3
