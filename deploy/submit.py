"""Command line: launch the trainer and the preprocessing job on Google Cloud.

    python -m deploy.submit vertex   --image IMG --arch A --data-dir gs://.. --job-dir gs://.. [..] [-- FLAGS]
    python -m deploy.submit gke      --image IMG --arch A --data-dir gs://.. --job-dir gs://.. [..] [-- FLAGS]
    python -m deploy.submit hptune   (the vertex flags) [--max-trials N --parallel-trials N]
    python -m deploy.submit dataflow --raw-dir gs://.. --output-dir gs://.. --project P --temp-location gs://..
    python -m deploy.submit stage    --src LOCAL_DIR --dest gs://bucket/prefix

``--dry-run`` prints the job (Vertex AI JSON, Kubernetes YAML, the Dataflow
command) and calls nothing. A bad flag prints one line on stderr and exits 2;
that includes the flags after ``--``, which the launched program's own parser
and value checks judge first (:func:`deploy.checks.check_trainer_flags`,
:func:`deploy.dataflow.check_argv`).
"""

import datetime
import sys

# First, before anything imports TensorFlow (the flag checks import the trainer): it reads
# its log settings once, when it loads.
from contracts import quiet

if __name__ == "__main__":
    quiet.quiet_tensorflow()

from contracts import cli, voice
from deploy import checks, config

VOICE = voice.Voice("submit")


def _default_name(prefix):
    return f"{prefix}-{datetime.datetime.now(datetime.UTC):%Y%m%d-%H%M%S}"


def _train_flags(parser):
    parser.add_argument("--image", required=True, help="training image, REGISTRY/IMAGE:TAG or @sha256:DIGEST")
    parser.add_argument("--arch", required=True, help="architecture (trainer --arch)")
    parser.add_argument("--data-dir", required=True, help="gs:// folder with TFRecords + metadata.json")
    parser.add_argument("--job-dir", required=True, help="gs:// folder for checkpoints, logs and the model")
    parser.add_argument("--name", help="job name (default: tiny-inception-<arch>-<UTC time>)")
    parser.add_argument(
        "--workers", type=int, default=1, help="machines (1: MirroredStrategy; more: multi-worker)"
    )
    parser.add_argument("--gpus", type=int, default=1, help="GPUs per machine (0: CPU)")
    parser.add_argument(
        "--gpu-type", help=f"GPU model, e.g. {checks.DEFAULT_GPU_TYPE} (the default) or NVIDIA_L4"
    )
    parser.add_argument("--machine-type", help="machine type (Vertex default: n1-standard-8)")
    parser.add_argument("--service-account", help="Vertex: SA e-mail; GKE: Kubernetes service account")
    parser.add_argument(
        "--restart-job-on-worker-restart",
        action="store_true",
        help="restart the whole job when a worker restarts (GKE: restart pods in place)",
    )
    parser.add_argument("--timeout", help="maximum run time: seconds or e.g. 90m, 12h, 2d")
    parser.add_argument("--dry-run", action="store_true", help="print the job spec and submit nothing")


def _vertex_flags(parser):
    parser.add_argument("--project", required=True, help="Google Cloud project id")
    parser.add_argument("--region", default="us-central1", help="Vertex AI region (default: us-central1)")
    parser.add_argument("--tensorboard", help="Vertex AI TensorBoard instance id or resource name")


def _build_parser():
    parser = cli.ArgumentParser(prog="python -m deploy.submit", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=cli.ArgumentParser)

    vertex = commands.add_parser("vertex", help="train on Vertex AI (CustomJob)")
    _train_flags(vertex)
    _vertex_flags(vertex)

    tune = commands.add_parser("hptune", help="tune learning rate, dropout and batch size on Vertex AI")
    _train_flags(tune)
    _vertex_flags(tune)
    tune.add_argument("--max-trials", type=int, default=12)
    tune.add_argument("--parallel-trials", type=int, default=3)
    tune.add_argument("--max-failed-trials", type=int, default=0)

    gke = commands.add_parser("gke", help="train on a GKE cluster (Job / Indexed Job manifests)")
    _train_flags(gke)
    gke.add_argument("--namespace", default="default")
    gke.add_argument("--port", type=int, default=checks.TF_PORT, help="port between TensorFlow workers")

    flow = commands.add_parser("dataflow", help="run the preprocessing job on Dataflow")
    flow.add_argument("--raw-dir", required=True, help="gs:// folder of the extracted raw dataset")
    flow.add_argument("--output-dir", required=True, help="gs:// folder for TFRecords + metadata.json")
    flow.add_argument("--project", required=True)
    flow.add_argument("--region", default="us-central1")
    flow.add_argument("--temp-location", required=True, help="gs:// scratch folder")
    flow.add_argument("--name", help="Dataflow job name (default: tiny-inception-preprocess-<UTC time>)")
    flow.add_argument("--setup-file", default="./setup.py", help="setup.py shipped to the workers")
    flow.add_argument("--max-num-workers", type=int, default=8)
    flow.add_argument("--machine-type", default="n1-standard-4")
    flow.add_argument("--service-account", help="worker service account e-mail")
    flow.add_argument("--dry-run", action="store_true", help="print the command and run nothing")

    stage = commands.add_parser("stage", help="upload a local dataset folder to a bucket")
    stage.add_argument("--src", required=True, help="local folder")
    stage.add_argument("--dest", required=True, help="gs://bucket/prefix")
    stage.add_argument("--project", help="project for the storage client")
    stage.add_argument("--resumable-threshold", type=int, default=8 * 1024 * 1024, help="bytes")
    stage.add_argument("--chunk-size", type=int, default=8 * 1024 * 1024, help="bytes, a multiple of 262144")
    return parser


def _train_job(args, extra):
    machines = config.Machines(
        workers=args.workers, gpus=args.gpus, gpu_type=args.gpu_type, machine_type=args.machine_type
    )
    return config.TrainJob(
        name=args.name or _default_name(f"tiny-inception-{args.arch.replace('_', '-')}"),
        image=args.image,
        arch=args.arch,
        data_dir=args.data_dir,
        job_dir=args.job_dir,
        machines=machines,
        service_account=args.service_account,
        restart_on_worker_restart=args.restart_job_on_worker_restart,
        timeout_seconds=checks.parse_duration(args.timeout) if args.timeout else None,
        trainer_args=tuple(extra),
    )


def _vertex_job(args, extra):
    return config.VertexJob(
        job=_train_job(args, extra), project=args.project, region=args.region, tensorboard=args.tensorboard
    )


def _run_vertex(args, extra):
    spec = _vertex_job(args, extra)
    from deploy import vertex

    job = vertex.build_custom_job(spec)
    if args.dry_run:
        print(vertex.to_json(job))
    else:
        VOICE.say(f"created {vertex.submit(spec, job)}")


def _run_hptune(args, extra):
    spec = config.TuneJob(
        vertex=_vertex_job(args, extra),
        max_trials=args.max_trials,
        parallel_trials=args.parallel_trials,
        max_failed_trials=args.max_failed_trials,
    )
    from deploy import hptune, vertex

    job = hptune.build_tuning_job(spec)
    if args.dry_run:
        print(vertex.to_json(job))
    else:
        VOICE.say(f"created {hptune.submit(spec, job)}")


def _run_gke(args, extra):
    spec = config.GkeJob(job=_train_job(args, extra), namespace=args.namespace, port=args.port)
    from deploy import gke

    manifests = gke.build_manifests(spec)
    if args.dry_run:
        print(gke.to_yaml(manifests), end="")
    else:
        for created in gke.apply(spec, manifests):
            VOICE.say(f"created {created}")


def _run_dataflow(args, extra):
    spec = config.DataflowJob(
        raw_dir=args.raw_dir,
        output_dir=args.output_dir,
        project=args.project,
        region=args.region,
        temp_location=args.temp_location,
        name=args.name or _default_name("tiny-inception-preprocess"),
        setup_file=args.setup_file,
        max_num_workers=args.max_num_workers,
        machine_type=args.machine_type,
        service_account=args.service_account,
        beam_args=tuple(extra),
    )
    from deploy import dataflow

    argv = dataflow.build_argv(spec)
    dataflow.check_argv(argv)
    if args.dry_run:
        print(dataflow.command_line(argv))
        return 0
    return dataflow.run(argv)


def _run_stage(args, extra):
    if extra:
        raise checks.ConfigError("stage takes no arguments after '--'")
    spec = config.StageJob(
        src=args.src,
        dest=args.dest,
        resumable_threshold=args.resumable_threshold,
        chunk_size=args.chunk_size,
        project=args.project,
    )
    from deploy import staging

    staging.stage(spec)


# Each runner validates its spec before importing its builder, so bad flags
# are reported even where the cloud client libraries are not installed. A
# runner may return an exit status (the in-process preprocessing job does).
_COMMANDS = {
    "vertex": _run_vertex,
    "hptune": _run_hptune,
    "gke": _run_gke,
    "dataflow": _run_dataflow,
    "stage": _run_stage,
}


def main(argv=None):
    """Runs one subcommand; flags after ``--`` go to the launched program unchanged.

    Returns:
        0 on success, else the launched job's exit status (``dataflow`` runs
        in-process); bad flags exit with status 2 and one line on stderr.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    own, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = _build_parser()
    args = parser.parse_args(own)
    try:
        status = _COMMANDS[args.command](args, extra)
    except checks.ConfigError as error:
        parser.exit(cli.USAGE_ERROR, f"error: {error}\n")
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
