"""Converts a tiny-imagenet-200 folder into sharded TFRecords with Apache Beam.

Usage::

    python -m preprocessing.task --raw-dir SRC --output-dir DST [--valid-fraction 0.1]
        [--seed 42] [--num-shards-train 16 ...] [--overwrite] [any Beam pipeline option]

Our flags are parsed here; every other flag goes to Beam's ``PipelineOptions``
(``--runner DataflowRunner --project ... --region ... --temp_location gs://...
--setup_file ./setup.py``). See docs/preprocessing.md.
"""

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from contracts import schema
from preprocessing import fetch, plan, sources, transforms

LOGGER = logging.getLogger("preprocessing")
COUNTS_FILE = fetch.COUNTS_FILE
PLAN_DIR = fetch.PLAN_DIR
DEFAULT_SHARDS = {"train": 16, "valid": 4, "test": 4, "unlabeled": 4}
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


@dataclasses.dataclass(frozen=True)
class JobConfig:
    """The job's own settings (Beam's live in ``PipelineOptions``)."""

    raw_dir: str
    output_dir: str
    valid_fraction: float = 0.1
    seed: int = 42
    num_shards: tuple = tuple(DEFAULT_SHARDS.items())
    overwrite: bool = False
    max_reject_fraction: float = 0.01
    image_size: int = 64

    def __post_init__(self):
        if not 0.0 <= self.valid_fraction < 1.0:
            raise ValueError(f"--valid-fraction must be in [0, 1), got {self.valid_fraction}")
        if not 0.0 <= self.max_reject_fraction <= 1.0:
            raise ValueError(f"--max-reject-fraction must be in [0, 1], got {self.max_reject_fraction}")
        for split, count in self.num_shards:
            if count < 1:
                raise ValueError(f"--num-shards-{split} must be >= 1, got {count}")
        if self.image_size < 1:
            raise ValueError(f"--image-size must be >= 1, got {self.image_size}")


def build_parser():
    """Returns the parser of the job's own flags."""
    parser = argparse.ArgumentParser(
        prog="python -m preprocessing.task",
        description=__doc__.split("\n\n")[0],
        epilog="Any other flag is a Beam pipeline option, e.g. --runner DataflowRunner.",
        # Abbreviations would let our flags swallow Beam's (e.g. --output for --output-dir).
        allow_abbrev=False,
    )
    parser.add_argument("--raw-dir", required=True, help="Dataset folder or .zip (local, gs://, https://).")
    parser.add_argument("--output-dir", required=True, help="Folder for shards and metadata.json.")
    parser.add_argument("--valid-fraction", type=float, default=0.1, help="Share of each class for valid.")
    parser.add_argument("--seed", type=int, default=42, help="Seed of the train/valid split and shard order.")
    for split, count in DEFAULT_SHARDS.items():
        parser.add_argument(f"--num-shards-{split}", type=int, default=count, help=f"Shards of {split}.")
    parser.add_argument("--overwrite", action="store_true", help="Replace the outputs of an earlier run.")
    parser.add_argument(
        "--max-reject-fraction", type=float, default=0.01, help="Fail above this share of rejected inputs."
    )
    parser.add_argument("--image-size", type=int, default=64, help="Height and width every image must have.")
    return parser


def parse_args(argv):
    """Splits argv into a :class:`JobConfig` and the list of Beam arguments."""
    args, beam_args = build_parser().parse_known_args(argv)
    config = JobConfig(
        raw_dir=args.raw_dir,
        output_dir=args.output_dir.rstrip("/") if "://" in args.output_dir else args.output_dir,
        valid_fraction=args.valid_fraction,
        seed=args.seed,
        num_shards=tuple((s, getattr(args, f"num_shards_{s}")) for s in DEFAULT_SHARDS),
        overwrite=args.overwrite,
        max_reject_fraction=args.max_reject_fraction,
        image_size=args.image_size,
    )
    return config, beam_args


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
    size = (config.image_size, config.image_size)
    out = config.output_dir
    outputs = (
        pipeline
        | "ShardTasks" >> beam.Create(tasks)
        | "ConvertToShards" >> transforms.ConvertToShards(root, out, classes, size)
    )
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
    """Checks the reject budget and writes ``metadata.json`` (last, so it marks a complete output).

    Returns:
        The metadata dict.

    Raises:
        JobError: When more than ``max_reject_fraction`` of the inputs were rejected.
    """
    out = config.output_dir
    summaries = [json.loads(line) for line in _read_lines(fetch.join(out, COUNTS_FILE))]
    rejected = len(_read_lines(fetch.join(out, schema.REJECTED_FILE)))
    splits = {}
    for split, count in config.num_shards:
        shards = sorted((s for s in summaries if s["split"] == split), key=lambda s: s["index"])
        if [s["index"] for s in shards] != list(range(count)):
            raise JobError(f"internal error: the pipeline did not report every {split} shard", exit_code=1)
        splits[split] = {"count": sum(s["count"] for s in shards), "shards": [s["shard"] for s in shards]}
    total = rejected + sum(s["count"] for s in splits.values())
    fraction = rejected / total if total else 0.0
    counts = ", ".join(f"{split}={info['count']}" for split, info in splits.items())
    LOGGER.info("written: %s; rejected=%d (see %s)", counts, rejected, schema.REJECTED_FILE)
    fetch.delete([fetch.join(out, COUNTS_FILE)])
    if fraction > config.max_reject_fraction:
        raise JobError(
            f"{rejected} of {total} inputs rejected ({fraction:.2%} > --max-reject-fraction "
            f"{config.max_reject_fraction:.2%}); see {fetch.join(out, schema.REJECTED_FILE)}",
            exit_code=1,
        )
    metadata = {
        "schema_version": schema.SCHEMA_VERSION,
        "source": config.raw_dir,
        "seed": config.seed,
        "valid_fraction": config.valid_fraction,
        "image_size": [config.image_size, config.image_size],
        "classes": job_plan.classes.to_metadata(),
        "splits": splits,
        "rejected": {"count": rejected, "file": schema.REJECTED_FILE},
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


def _convert(config, beam_args, work_dir):
    check_remote_paths(config, _runner_name(beam_args))
    LOGGER.info("stage 1/4: checking --output-dir %s", config.output_dir)
    removed = fetch.prepare_output_dir(config.output_dir, config.overwrite)
    if removed:
        LOGGER.info("removed %d files of an earlier run", removed)
    LOGGER.info("stage 2/4: resolving --raw-dir %s", config.raw_dir)
    root = fetch.resolve_raw_dir(config.raw_dir, work_dir)
    job_plan = plan.make_plan(
        root, seed=config.seed, valid_fraction=config.valid_fraction, num_shards=dict(config.num_shards)
    )
    planned = ", ".join(f"{split}={n}" for split, n in job_plan.planned.items())
    LOGGER.info(
        "planned %d classes, %s images, %d rejected while listing",
        len(job_plan.classes),
        planned,
        len(job_plan.rejected),
    )
    beam_args = with_direct_defaults(beam_args, sum(job_plan.planned.values()))
    LOGGER.info("stage 3/4: running the Beam pipeline (%s)", " ".join(beam_args) or "DirectRunner defaults")
    staging = fetch.join(config.output_dir, PLAN_DIR)
    try:
        tasks = plan.write_manifests(job_plan, staging)
    except OSError as error:
        # The job's first write into --output-dir: a file in the way, or a folder it may not create.
        raise JobError(f"cannot write into --output-dir {config.output_dir}: {error}") from None
    try:
        with beam.Pipeline(options=PipelineOptions(beam_args)) as pipeline:
            build_pipeline(pipeline, job_plan, tasks, root, config)
    finally:
        fetch.delete([task.manifest for task in tasks])
        if fetch.is_local(staging):
            shutil.rmtree(staging, ignore_errors=True)
    LOGGER.info("stage 4/4: writing %s", schema.METADATA_FILE)
    return write_metadata(config, job_plan)


def run(argv=None):
    """Runs the job; returns the process exit status (0 ok, 1 too many rejects, 2 bad input)."""
    config_args = sys.argv[1:] if argv is None else argv
    try:
        config, beam_args = parse_args(config_args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
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
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s preprocessing: %(message)s", "%H:%M:%S"))
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.INFO)
    # TensorFlow installs a root handler; ours is enough.
    LOGGER.propagate = False
    sys.exit(run())


if __name__ == "__main__":
    main()
