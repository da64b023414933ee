"""Beam DoFns and composite transforms of the preprocessing job.

One element is one output shard (:class:`ShardTask`): the DoFn reads the
shard's manifest (the list of its images, written by the planner), reads,
validates, resizes (:mod:`preprocessing.images`: every record is ``S x S``;
each box moves with its image), decodes every kept JPEG in full with the
trainer's decoder (a batch at a time) and encodes those images, writes the shard
file itself, then reports the shard's counts (:class:`ShardSummary`: records
per class, boxes, source sizes) for ``metadata.json``. Working on
whole shards keeps per-element overhead off 100k tiny files and needs no
shuffle; shard contents are fixed by the plan, so a retried bundle rewrites the
same bytes. The image lists travel as manifest files, not inside the pipeline
graph, because Beam bz2-compresses everything pickled into the graph (seconds
for 100k items). Rejected inputs leave through a tagged output.
"""

import collections
import json
import logging
import os
import tempfile
import uuid

import apache_beam as beam
import tensorflow as tf

from contracts import resize, schema
from preprocessing import fetch, images, sources

NAMESPACE = "preprocessing"
# The job's logger: the launcher prints its lines (contracts.voice); on Dataflow they reach the workers' logs.
LOGGER = logging.getLogger("preprocessing")
# One line per written shard; on a terminal the launcher draws these as one bar (preprocessing.task).
SHARD_WRITTEN = "shard %s written: %d images, %d rejected"
REJECTED = "rejected"

ShardTask = collections.namedtuple("ShardTask", ["split", "index", "num_shards", "manifest"])
ShardTask.__doc__ = """One output shard to write.

Attributes:
    split: Output split name (``train``, ``valid``, ``test``, ``unlabeled``).
    index: Zero-based shard index.
    num_shards: Number of shards of the split.
    manifest: Path of the shard's manifest (:func:`preprocessing.sources.items_to_text`).
"""

ShardSummary = collections.namedtuple(
    "ShardSummary",
    ["split", "index", "shard", "count", "class_counts", "boxes", "boxes_cropped", "source_sizes"],
)
ShardSummary.__doc__ = """What one shard holds, for ``metadata.json`` (preprocessing.task.write_metadata).

Attributes:
    split: Output split name.
    index: Zero-based shard index.
    shard: The shard's file name.
    count: Records written.
    class_counts: Records per class index (a list as long as the class table; unlabelled records
        count in none).
    boxes: Records with a box.
    boxes_cropped: Records whose source box the ``crop`` policy cut away entirely (stored without one).
    source_sizes: ``{"WxH": records}`` of the source images' sizes, before resizing.
"""


def rejected_line(path, reason):
    """Returns the dead-letter JSON line of one rejected input."""
    return json.dumps({"path": path, "reason": reason})


class _ShardWriter:
    """Writes one TFRecord file; it appears under its final name only when complete."""

    def __init__(self, path):
        self._path = path
        if fetch.is_local(path):
            # Beside the target, so the final rename stays on one file system.
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self._tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        else:
            self._tmp = os.path.join(tempfile.gettempdir(), f"shard-{uuid.uuid4().hex}.tfrecord")
        self._writer = tf.io.TFRecordWriter(self._tmp)

    def write(self, record):
        self._writer.write(record)

    def close(self):
        self._writer.close()
        try:
            fetch.upload(self._tmp, self._path)
        finally:
            if os.path.exists(self._tmp):
                os.remove(self._tmp)

    def abort(self):
        self._writer.close()
        if os.path.exists(self._tmp):
            os.remove(self._tmp)


def _read_local(path, limit=images.MAX_FILE_BYTES):
    """Reads a local file, refusing one over ``limit`` bytes before it is read whole.

    The same raw-descriptor reads as :func:`preprocessing.fetch.read_bytes`
    (the fast path of 100k small files), with the cap checked as chunks arrive:
    no extra system call per file, and a 10 GB file never reaches memory.
    """
    # Non-blocking: listing saw a regular file, but should a FIFO take its place, this returns at once.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        chunks, size = [], 0
        while chunk := os.read(fd, fetch.READ_CHUNK):
            size += len(chunk)
            if size > limit:
                raise images.BadImageError(f"file exceeds the limit of {limit} bytes")
            chunks.append(chunk)
    finally:
        os.close(fd)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _Tally:
    """The counts of one shard as its records are written (one per ``process`` call: nothing shared)."""

    def __init__(self, num_classes):
        self.count = self.boxes = self.cropped = self.resized = 0
        self.class_counts = [0] * num_classes
        self.sizes = collections.Counter()

    def add(self, item, image, box):
        self.count += 1
        if item.label >= 0:
            self.class_counts[item.label] += 1
        self.boxes += box is not None
        self.cropped += item.box is not None and box is None
        self.resized += (image.source_height, image.source_width) != (image.height, image.width)
        self.sizes[f"{image.source_width}x{image.source_height}"] += 1

    def summary(self, task, shard):
        sizes = dict(sorted(self.sizes.items()))
        return ShardSummary(
            task.split, task.index, shard, self.count, self.class_counts, self.boxes, self.cropped, sizes
        )


class ConvertShardFn(beam.DoFn):
    """Turns a :class:`ShardTask` into a shard file.

    Main output: one :class:`ShardSummary`. Tagged output ``rejected``: one
    dead-letter JSON line per input that could not become a record.

    Args:
        raw_root: Dataset root (local folder or ``gs://`` prefix).
        output_dir: Folder the shards go to.
        classes: ``[(wnid, name)]`` in class-index order.
        image_size: Side ``S`` of every stored image, or ``None`` to keep each image's size.
        policy: How an image that is not ``S x S`` becomes so (:data:`contracts.resize.POLICIES`).
    """

    def __init__(self, raw_root, output_dir, classes, image_size, policy=resize.DEFAULT_POLICY):
        resize.check_policy(policy)
        self._raw_root = raw_root
        self._output_dir = output_dir
        self._classes = [tuple(c) for c in classes]
        self._image_size = image_size
        self._policy = policy

    def setup(self):
        self._written = beam.metrics.Metrics.counter(NAMESPACE, "images_written")
        self._rejected = beam.metrics.Metrics.counter(NAMESPACE, "images_rejected")
        self._reencoded = beam.metrics.Metrics.counter(NAMESPACE, "images_reencoded")
        self._resized = beam.metrics.Metrics.counter(NAMESPACE, "images_resized")
        self._shards = beam.metrics.Metrics.counter(NAMESPACE, "shards_written")

    def _box(self, item, image):
        # The source box in the stored image's pixels; None when the crop cut it away.
        if self._image_size is None:
            return item.box
        return resize.resize_box(
            item.box, image.source_height, image.source_width, self._image_size, self._policy
        )

    def _encode(self, item, image, box):
        wnid, name = self._classes[item.label] if item.label >= 0 else ("", "")
        return schema.encode_example(
            image.data,
            height=image.height,
            width=image.width,
            filename=item.path.rsplit("/", 1)[-1],
            source_split=item.source_split,
            label=item.label,
            wnid=wnid,
            class_name=name,
            box=box,
        )

    def _convert(self, item):
        # A manifest may name absolute and gs:// paths; every other item is relative to the root.
        path = fetch.resolve(self._raw_root, item.path)
        try:
            data = _read_local(path) if fetch.is_local(path) else fetch.read_bytes(path)
        except images.BadImageError:
            raise
        except Exception as error:  # OSError, or a storage client's own errors: this file only.
            raise images.BadImageError(f"unreadable file: {error}") from None
        # Kept bytes are decoded in full a batch at a time (_decoded), not here one by one.
        return images.validate_image(data, self._image_size, self._policy, False)

    def _record(self, item):
        """Returns ``(serialized Example, image, box)``; any failure of this one file is a BadImageError."""
        try:
            image = self._convert(item)
            box = self._box(item, image)
            return self._encode(item, image, box), image, box
        except images.BadImageError:
            raise
        except Exception as error:
            # validate_image raises nothing else by design; should a decoder or the
            # encoder still fail on one hostile file, the job rejects that file and goes on.
            raise images.BadImageError(f"unexpected error: {type(error).__name__}: {error}") from None

    @staticmethod
    def _decoded(converted, rejected):
        """Yields the converted files whose kept bytes the trainer's decoder reads; rejects the others.

        One :func:`preprocessing.images.decode_failures` call for the batch;
        should that call itself fail, each file is decoded alone, so the
        failure stays with the file that caused it.
        """
        kept = [i for i, (_, _, image, _) in enumerate(converted) if image.reencoded_from is None]
        try:
            failures = images.decode_failures([converted[i][2] for i in kept])
            bad = {kept[position]: reason for position, reason in failures.items()}
        except Exception:
            bad = {}
            for i in kept:
                try:
                    reason = images.decode_failures([converted[i][2]]).get(0)
                except Exception as error:
                    reason = f"unexpected error: {type(error).__name__}: {error}"
                if reason:
                    bad[i] = reason
        for i, converted_file in enumerate(converted):
            if i in bad:
                rejected.append(rejected_line(converted_file[0].path, bad[i]))
            else:
                yield converted_file

    def process(self, task):
        shard = schema.shard_name(task.split, task.index, task.num_shards)
        writer = _ShardWriter(fetch.join(self._output_dir, shard))
        tally = _Tally(len(self._classes))
        rejected = []
        try:
            items = sources.items_from_text(fetch.read_text(task.manifest))
            for start in range(0, len(items), images.DECODE_BATCH):
                converted = []
                for item in items[start : start + images.DECODE_BATCH]:
                    try:
                        converted.append((item, *self._record(item)))
                    except images.BadImageError as error:
                        rejected.append(rejected_line(item.path, str(error)))
                for item, record, image, box in self._decoded(converted, rejected):
                    if image.reencoded_from:
                        self._reencoded.inc()
                    # Outside the per-file guard: a failing write is the job's failure, not the file's.
                    writer.write(record)
                    tally.add(item, image, box)
            writer.close()
        except BaseException:
            writer.abort()
            raise
        count = tally.count
        self._written.inc(count)
        self._resized.inc(tally.resized)
        self._rejected.inc(len(rejected))
        self._shards.inc()
        beam.metrics.Metrics.counter(NAMESPACE, f"{task.split}_written").inc(count)
        LOGGER.info(SHARD_WRITTEN, shard, count, len(rejected))
        for line in rejected:
            yield beam.pvalue.TaggedOutput(REJECTED, line)
        yield tally.summary(task, shard)


class ConvertToShards(beam.PTransform):
    """``PCollection[ShardTask]`` -> ``{"summaries": ..., "rejected": ...}``.

    Args:
        raw_root, output_dir, classes, image_size, policy: As for :class:`ConvertShardFn`.
    """

    def __init__(self, raw_root, output_dir, classes, image_size, policy=resize.DEFAULT_POLICY, label=None):
        super().__init__(label)
        self._fn = ConvertShardFn(raw_root, output_dir, classes, image_size, policy)

    def expand(self, tasks):
        outputs = tasks | "ReadValidateWrite" >> beam.ParDo(self._fn).with_outputs(REJECTED, main="summaries")
        return {"summaries": outputs.summaries, "rejected": outputs[REJECTED]}


class WriteSingleFile(beam.PTransform):
    """Writes a PCollection of text lines into exactly one file (empty when there are no lines).

    Args:
        path: The file to write.
    """

    def __init__(self, path, label=None):
        super().__init__(label)
        self._path = path

    def expand(self, lines):
        # One file written whole through the storage layer (fetch.write_bytes),
        # so remote output needs no second file-system client.
        path = self._path
        return (
            lines
            | "Collect" >> beam.combiners.ToList()
            | "Write" >> beam.Map(lambda collected: fetch.write_bytes(path, _text(collected)))
        )


def _text(lines):
    return "".join(f"{line}\n" for line in lines).encode("utf-8")


def count_line(summary):
    """Serializes a :class:`ShardSummary` for the counts file."""
    return json.dumps(summary._asdict())
