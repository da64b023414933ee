"""Converts a folder of labelled photos into sharded TFRecords with Apache Beam.

(The parser's description, :data:`preprocessing.flags.DESCRIPTION`, says which layouts.)

Usage::

    python -m preprocessing.task --raw-dir SRC --output-dir DST [--layout auto] [--valid-fraction 0.1]
        [--test-fraction 0.1] [--seed 42] [--num-shards-train 16 ...] [--overwrite] [any Beam pipeline option]

Our flags are parsed by :mod:`preprocessing.flags`; every other flag must be one of Beam's pipeline
options (``--runner DataflowRunner --project ... --region ... --temp_location
gs://... --setup_file ./setup.py``) and goes to ``PipelineOptions``; anything
else is an error. See docs/preprocessing.md.
"""

import dataclasses
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

# First, before anything imports TensorFlow: it reads its log settings once, when it loads.
from contracts import quiet

if __name__ == "__main__":
    quiet.quiet_tensorflow()

from contracts import schema, voice
from preprocessing import accounting, fetch, flags, plan, publish, sources, summary, transforms

LOGGER = logging.getLogger("preprocessing")
COUNTS_FILE = fetch.COUNTS_FILE
PLAN_DIR = fetch.PLAN_DIR
# Worker processes each import TensorFlow and receive the records over gRPC
# (measured: ~9 CPU-seconds of overhead for two workers), so they pay off only
# for large inputs on machines with several cores; on 2 cores one in-process
# worker was faster end to end (docs/preprocessing.md).
MULTIPROCESS_MIN_IMAGES = 50000
MULTIPROCESS_MIN_CPUS = 4
LOCAL_RUNNERS = ("directrunner", "direct", "prismrunner", "prism")


class JobError(Exception):
    """A failure reported as one line; ``exit_code`` is the process exit status."""

    def __init__(self, message, exit_code=2):
        super().__init__(message)
        self.exit_code = exit_code


def _runner_name(beam_args):
    runner = PipelineOptions(beam_args).view_as(StandardOptions).runner
    if runner is None:
        return "directrunner"
    return (runner if isinstance(runner, str) else type(runner).__name__).lower()


def with_direct_defaults(beam_args, num_images):
    """Adds DirectRunner parallelism flags the user did not give.

    Large inputs on machines with at least ``MULTIPROCESS_MIN_CPUS`` cores run
    on one worker process per core (the work is CPU bound and Python threads
    share one GIL); everything else runs in-process, where worker start-up
    would dominate. Splits and shard contents do not depend on this choice.
    """
    if _runner_name(beam_args) not in LOCAL_RUNNERS or any(
        a.startswith(("--direct_num_workers", "--direct_running_mode")) for a in beam_args
    ):
        return list(beam_args)
    if num_images < MULTIPROCESS_MIN_IMAGES or (os.cpu_count() or 1) < MULTIPROCESS_MIN_CPUS:
        return list(beam_args)
    workers = str(os.cpu_count())
    return [*beam_args, "--direct_running_mode", "multi_processing", "--direct_num_workers", workers]


def build_pipeline(pipeline, job_plan, tasks, root, config):
    """Adds the conversion steps for ``job_plan`` (staged as ``tasks``) to ``pipeline``."""
    classes = list(zip(job_plan.classes.wnids, job_plan.classes.names, strict=True))
    out = config.output_dir
    convert = transforms.ConvertToShards(root, out, classes, config.image_size, config.resize)
    outputs = pipeline | "ShardTasks" >> beam.Create(tasks) | "ConvertToShards" >> convert
    planned = [transforms.rejected_line(r.path, r.reason) for r in job_plan.rejected]
    rejected = (
        (outputs["rejected"], pipeline | "PlanRejects" >> beam.Create(planned))
        | "AllRejects" >> beam.Flatten()
        | "CollectRejects" >> beam.combiners.ToList()
        | "SortRejects" >> beam.FlatMap(sorted)
    )
    _ = rejected | "WriteRejected" >> transforms.WriteSingleFile(fetch.join(out, schema.REJECTED_FILE))
    _ = (
        outputs["summaries"]
        | "SummaryLines" >> beam.Map(transforms.count_line)
        | "WriteCounts" >> transforms.WriteSingleFile(fetch.join(out, COUNTS_FILE))
    )


def _read_lines(path):
    return [line for line in fetch.read_text(path).splitlines() if line.strip()]


def write_metadata(config, job_plan):
    """Checks the accounting and the reject budget, then writes ``metadata.json``.

    ``metadata.json`` is written last: its presence marks a complete output.

    Returns:
        The metadata dict.

    Raises:
        JobError: When written + rejected differs from the inputs the plan
            found (an internal error), or more than ``max_reject_fraction`` of
            the inputs were rejected (both exit 1), or a class has fewer than
            ``min_train_per_class`` train images (exit 2).
    """
    out = config.output_dir
    summaries = [json.loads(line) for line in _read_lines(fetch.join(out, COUNTS_FILE))]
    dead_letters = [json.loads(line) for line in _read_lines(fetch.join(out, schema.REJECTED_FILE))]
    rejected = len(dead_letters)
    splits = {}
    for split, count in config.num_shards:
        shards = sorted((s for s in summaries if s["split"] == split), key=lambda s: s["index"])
        if [s["index"] for s in shards] != list(range(count)):
            raise JobError(f"internal error: the pipeline did not report every {split} shard", exit_code=1)
        splits[split] = {"count": sum(s["count"] for s in shards), "shards": [s["shard"] for s in shards]}
        splits[split].update(summary.split_counts(split, shards, len(job_plan.classes)))
    written = sum(s["count"] for s in splits.values())
    total = rejected + written
    fraction = rejected / total if total else 0.0
    counts = ", ".join(f"{split}={info['count']}" for split, info in splits.items())
    # Names no file: a failed run keeps its dead letters under another name, which its error line names.
    LOGGER.info("written: %s; rejected=%d", counts, rejected)
    sizes = summary.all_source_sizes(summaries)
    cropped = summary.boxes_cropped(summaries)
    LOGGER.info("%s", summary.resize_line(sizes, config.image_size, config.resize, cropped))
    names = job_plan.classes.names
    LOGGER.info("%s", summary.class_count_line(splits, names))
    imbalance = summary.imbalance_warning(splits.get("train", {}).get("class_counts"), names)
    if imbalance:
        LOGGER.warning("%s", imbalance)
    LOGGER.info(
        "accounted for %d inputs (%s): written %d, rejected %d",
        job_plan.found,
        job_plan.describe_inputs(),
        written,
        rejected,
    )
    fetch.delete([fetch.join(out, COUNTS_FILE)])
    if total != job_plan.found:
        # Every input found must end as one record or one dead letter; anything else is a bug here.
        raise JobError(
            f"internal error: {job_plan.found} inputs found, but {written} written + {rejected} rejected "
            f"= {total}; see {fetch.join(out, schema.REJECTED_FILE)}",
            exit_code=1,
        )
    if fraction > config.max_reject_fraction:
        raise JobError(
            f"{rejected} of {total} inputs rejected ({fraction:.2%} > --max-reject-fraction "
            f"{config.max_reject_fraction:.2%}); see {fetch.join(out, schema.REJECTED_FILE)}",
            exit_code=1,
        )
    train_counts = splits.get("train", {}).get("class_counts", [])
    short = accounting.short_classes(job_plan, train_counts, dead_letters, config.min_train_per_class)
    if short:
        raise JobError(f"{short}; see {fetch.join(out, schema.REJECTED_FILE)}")
    metadata = {
        "schema_version": schema.SCHEMA_VERSION,
        "source": config.raw_dir,
        "seed": config.seed,
        "valid_fraction": config.valid_fraction,
        "image_size": [config.image_size, config.image_size],
        "resize": {"policy": config.resize, "size": config.image_size},
        "source_sizes": summary.source_sizes(sizes),
        "classes": job_plan.classes.to_metadata(),
        "splits": splits,
        "rejected": {"count": rejected, "file": schema.REJECTED_FILE},
        "inputs": {"found": job_plan.found, "written": written, "rejected": rejected},
        "layout": job_plan.layout,
    }
    fetch.write_bytes(fetch.join(out, schema.METADATA_FILE), json.dumps(metadata, indent=2).encode())
    return metadata


def check_remote_paths(config, runner):
    """Refuses paths that workers of a remote runner (e.g. Dataflow) could not reach.

    Raises:
        JobError: For a local ``--output-dir`` or a ``--raw-dir`` that is not a
            ``gs://`` folder (archives are extracted on the launching machine).
    """
    if runner in LOCAL_RUNNERS:
        return
    out, raw = config.output_dir, config.raw_dir
    if fetch.is_local(out):
        raise JobError(f"--runner {runner} needs a gs:// --output-dir; workers cannot write {out}")
    if fetch.is_local(raw) or raw.startswith(fetch.WEB_SCHEMES) or raw.lower().endswith(".zip"):
        raise JobError(
            f"--runner {runner} needs --raw-dir as an extracted gs:// folder (archives are extracted "
            f"on this machine, which workers cannot read); got {raw}"
        )


class ShardBar(logging.Filter):
    """On a terminal, draws the shard lines of in-process workers as one bar over all shards.

    The DoFns only log (no state shared between them); this filter, on the
    launcher's logger, counts their :data:`preprocessing.transforms.SHARD_WRITTEN`
    records instead of printing each. Off a terminal the lines print as they come.

    Args:
        steps: A :class:`contracts.voice.Progress` over the job's shards.
    """

    def __init__(self, steps):
        super().__init__()
        self.steps = steps
        self.images = self.rejected = 0
        self._lock = threading.Lock()  # In-process workers may be threads.

    def filter(self, record):
        if record.msg != transforms.SHARD_WRITTEN:
            return True
        _, images, rejected = record.args
        with self._lock:
            self.images += images
            self.rejected += rejected
            self.steps.advance(detail=f"{self.images} images written, {self.rejected} rejected")
        return False


def _run_pipeline(staged, beam_args, job_plan, root, output_dir):
    try:
        tasks = plan.write_manifests(job_plan, fetch.join(staged.output_dir, PLAN_DIR))
    except OSError as error:
        # The job's first write into --output-dir (a gs:// one has no folder to create first).
        raise JobError(f"cannot write into --output-dir {output_dir}: {error}") from None
    with voice.Voice("preprocessing").progress(len(tasks), "shards") as steps:
        bar = ShardBar(steps) if steps.interactive else None
        if bar:
            LOGGER.addFilter(bar)
        try:
            with beam.Pipeline(options=PipelineOptions(beam_args)) as pipeline:
                build_pipeline(pipeline, job_plan, tasks, root, staged)
        finally:
            if bar:
                LOGGER.removeFilter(bar)


def _finish(staged, job_plan, staging):
    try:
        return write_metadata(staged, job_plan)
    except JobError as error:
        # Nothing is published, but the dead letters explain the failure: keep them, and name
        # where they now are instead of the staging folder that is about to go.
        kept = staging.keep_rejects()
        message = str(error).replace(*kept) if kept else str(error)
        raise JobError(message, exit_code=error.exit_code) from None


def _convert(config, beam_args, work_dir):
    start = time.monotonic()
    check_remote_paths(config, _runner_name(beam_args))
    LOGGER.info("stage 1/4: checking --output-dir %s", config.output_dir)
    earlier = publish.check_output_dir(config.output_dir, config.overwrite)
    if earlier:
        LOGGER.info("%d files of an earlier run will be replaced when this one succeeds", len(earlier))
    LOGGER.info("stage 2/4: resolving --raw-dir %s", config.raw_dir)
    job_plan = plan.plan_source(
        fetch.fetch_raw_dir(config.raw_dir, work_dir, config.limits),
        layout=config.layout,
        seed=config.seed,
        valid_fraction=config.valid_fraction,
        test_fraction=config.test_fraction,
        num_shards=dict(config.num_shards),
        shown_as=config.raw_dir,
    )
    root = job_plan.root
    planned = ", ".join(f"{split}={n}" for split, n in job_plan.planned.items())
    LOGGER.info(
        "planned %d classes (%s layout), %s images, %d rejected while listing",
        len(job_plan.classes),
        job_plan.layout,
        planned,
        len(job_plan.rejected),
    )
    beam_args = with_direct_defaults(beam_args, sum(job_plan.planned.values()))
    LOGGER.info("stage 3/4: running the Beam pipeline (%s)", " ".join(beam_args) or "DirectRunner defaults")
    try:
        staging = publish.Staging(config.output_dir)
    except OSError as error:
        # A file in the way, or a folder the job may not create.
        raise JobError(f"cannot write into --output-dir {config.output_dir}: {error}") from None
    # Everything is written into the staging folder and published only when complete;
    # leaving this block by any exception removes it (publish.Staging).
    with staging:
        staged = dataclasses.replace(config, output_dir=staging.path)
        _run_pipeline(staged, beam_args, job_plan, root, config.output_dir)
        LOGGER.info("stage 4/4: writing %s and publishing into %s", schema.METADATA_FILE, config.output_dir)
        metadata = _finish(staged, job_plan, staging)
        names, removed = staging.publish()
    if removed:
        LOGGER.info("removed %d files of an earlier run", removed)
    LOGGER.info("published %d files; the job took %.1f s", len(names), time.monotonic() - start)
    return metadata


def run(argv=None):
    """Runs the job; returns the process exit status (0 ok, 1 too many rejects, 2 bad input)."""
    config_args = sys.argv[1:] if argv is None else argv
    try:
        config, beam_args = flags.parse_args(config_args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except SystemExit as stop:  # argparse printed the usage error (or --help) already.
        return stop.code
    work_dir = fetch.make_work_dir()
    try:
        _convert(config, beam_args, work_dir)
    except JobError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except (fetch.SourceError, sources.LayoutError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # The storage layer names the path it could not reach.
        print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return 0


def main():
    """Command-line entry point."""
    voice.attach(LOGGER.name, "preprocessing")
    # SIGTERM (a stopped container, a cancelled CI job) unwinds like any failure,
    # so the staging and scratch folders are removed; only SIGKILL leaves them.
    signal.signal(signal.SIGTERM, _terminate)
    try:
        code = run()
    except BaseException:
        if not _SIGNALLED:
            raise
        # Beam re-raises the exit from inside a DoFn as a RuntimeError: report the signal instead.
        print(f"error: stopped by signal {_SIGNALLED[0]}; nothing was published", file=sys.stderr)
        code = 128 + _SIGNALLED[0]
    sys.exit(code)


_SIGNALLED = []


def _terminate(signum, frame):
    _SIGNALLED.append(signum)
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    main()
