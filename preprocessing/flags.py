"""The Beam job's own flags: its parser and its frozen :class:`JobConfig`.

Apart from :mod:`preprocessing.task` so that ``deploy.submit dataflow`` can
check a job's flags (``deploy.dataflow.check_argv``) without loading the
pipeline's transforms and TensorFlow: only Beam's pipeline options come in.
"""

import argparse
import dataclasses

from contracts import cli, quiet, resize
from preprocessing import archive, beam_options

DESCRIPTION = (
    "Converts a folder of labelled photos (a class-per-folder tree, a CSV/JSONL manifest or the "
    "tiny-imagenet-200 layout) into sharded TFRecords with Apache Beam."
)
LAYOUTS = ("auto", "tiny-imagenet", "folders", "manifest")
DEFAULT_SHARDS = {"train": 16, "valid": 4, "test": 4, "unlabeled": 4}


@dataclasses.dataclass(frozen=True)
class JobConfig:
    """The job's own settings (Beam's live in ``PipelineOptions``)."""

    raw_dir: str
    output_dir: str
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    layout: str = "auto"
    seed: int = 42
    num_shards: tuple = tuple(DEFAULT_SHARDS.items())
    overwrite: bool = False
    max_reject_fraction: float = 0.01
    min_train_per_class: int = 1
    image_size: int = 64
    resize: str = resize.DEFAULT_POLICY
    limits: archive.Limits = dataclasses.field(default_factory=archive.Limits)

    def __post_init__(self):
        if not 0.0 <= self.valid_fraction < 1.0:
            raise ValueError(f"--valid-fraction must be in [0, 1), got {self.valid_fraction}")
        if not 0.0 <= self.test_fraction < 1.0:
            raise ValueError(f"--test-fraction must be in [0, 1), got {self.test_fraction}")
        if self.valid_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"--valid-fraction + --test-fraction must leave images to train on, got "
                f"{self.valid_fraction} + {self.test_fraction}"
            )
        if self.layout not in LAYOUTS:
            raise ValueError(f"--layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        resize.check_policy(self.resize)
        if not 0.0 <= self.max_reject_fraction <= 1.0:
            raise ValueError(f"--max-reject-fraction must be in [0, 1], got {self.max_reject_fraction}")
        if self.min_train_per_class < 0:
            raise ValueError(f"--min-train-per-class must be >= 0, got {self.min_train_per_class}")
        for split, count in self.num_shards:
            if count < 1:
                raise ValueError(f"--num-shards-{split} must be >= 1, got {count}")
        if self.image_size < 1:
            raise ValueError(f"--image-size must be >= 1, got {self.image_size}")


def _byte_count(text):
    try:
        return archive.parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser():
    """Returns the parser of the job's own flags (a usage error is one ``error:`` line, exit 2)."""
    parser = cli.ArgumentParser(
        prog="python -m preprocessing.task",
        description=DESCRIPTION,
        epilog="Your own photos: --raw-dir myphotos --output-dir data/mine --image-size 128 (a folder per "
        "class), then python -m trainer.task --data-dir data/mine --job-dir jobs/mine. Any other flag "
        "must be a Beam pipeline option, e.g. --runner DataflowRunner.",
        # Abbreviations would let our flags swallow Beam's (e.g. --output for --output-dir).
        allow_abbrev=False,
    )
    parser.add_argument(
        "--raw-dir",
        required=True,
        help="Photos: a folder or .zip (local, gs://, https://), or a .csv/.jsonl manifest.",
    )
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="auto",
        help="How --raw-dir is organised; auto detects it (docs/preprocessing.md).",
    )
    parser.add_argument("--output-dir", required=True, help="Folder for shards and metadata.json.")
    parser.add_argument(
        "--valid-fraction",
        type=float,
        default=0.1,
        help="Share of each class for valid where the source has no valid split.",
    )
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=0.1,
        help="Share of each class for test where the source has no test split.",
    )
    parser.add_argument("--seed", type=int, default=42, help="Seed of the splits and the shard order.")
    for split, count in DEFAULT_SHARDS.items():
        parser.add_argument(f"--num-shards-{split}", type=int, default=count, help=f"Shards of {split}.")
    parser.add_argument("--overwrite", action="store_true", help="Replace the outputs of an earlier run.")
    parser.add_argument(
        "--max-reject-fraction", type=float, default=0.01, help="Fail above this share of rejected inputs."
    )
    parser.add_argument(
        "--min-train-per-class",
        type=int,
        default=1,
        metavar="N",
        help="Fail (exit 2) when a class has fewer than N train images after the rejects; 0: no check.",
    )
    parser.add_argument("--image-size", type=int, default=64, help="Side S of the images written.")
    parser.add_argument(
        "--resize",
        choices=resize.POLICIES,
        default=resize.DEFAULT_POLICY,
        help="How an image of another size becomes S x S: crop (the centre square, scaled to S), "
        "pad (letterbox on black) or stretch.",
    )
    quiet.add_verbose_flag(parser)
    limits = parser.add_argument_group("archives and downloads (a .zip or http(s):// --raw-dir)")
    limits.add_argument("--raw-sha256", metavar="HEX", help="Refuse the archive unless its SHA-256 is HEX.")
    size = {"type": _byte_count, "metavar": "SIZE"}
    limits.add_argument(
        "--max-archive-bytes", default=archive.MAX_ARCHIVE_BYTES, **size, help="Largest expanded zip (4GiB)."
    )
    limits.add_argument(
        "--max-download-bytes", default=archive.MAX_DOWNLOAD_BYTES, **size, help="Largest download (1GiB)."
    )
    limits.add_argument(
        "--download-timeout",
        type=float,
        default=archive.DOWNLOAD_TIMEOUT_S,
        metavar="SECONDS",
        help="Wall-clock limit of a whole download, not per read (3600).",
    )
    return parser


def parse_args(argv):
    """Splits argv into a :class:`JobConfig` and the list of Beam arguments.

    Raises:
        SystemExit: For a usage error of our flags (one line printed, code 2) or ``--help`` (0).
        ValueError: For a bad value, or a flag that is neither ours nor a Beam pipeline option.
    """
    parser = build_parser()
    args, beam_args = parser.parse_known_args(argv)
    beam_options.check(beam_args, [flag for action in parser._actions for flag in action.option_strings])
    config = JobConfig(
        raw_dir=args.raw_dir,
        output_dir=args.output_dir.rstrip("/") if "://" in args.output_dir else args.output_dir,
        valid_fraction=args.valid_fraction,
        test_fraction=args.test_fraction,
        layout=args.layout,
        seed=args.seed,
        num_shards=tuple((s, getattr(args, f"num_shards_{s}")) for s in DEFAULT_SHARDS),
        overwrite=args.overwrite,
        max_reject_fraction=args.max_reject_fraction,
        min_train_per_class=args.min_train_per_class,
        image_size=args.image_size,
        resize=args.resize,
        limits=archive.Limits(
            max_archive_bytes=args.max_archive_bytes,
            max_download_bytes=args.max_download_bytes,
            download_timeout_s=args.download_timeout,
            sha256=args.raw_sha256.lower() if args.raw_sha256 else None,
        ),
    )
    return config, beam_args
