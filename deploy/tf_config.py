"""Sets ``TF_CONFIG`` from a Kubernetes Indexed Job's completion index, then execs a command.

Each pod of an Indexed Job gets ``JOB_COMPLETION_INDEX`` and the hostname
``<job>-<index>``; with ``subdomain`` set to a headless Service, every pod is
reachable as ``<job>-<index>.<service>.<namespace>.svc``. This entry point
turns that into the cluster spec MultiWorkerMirroredStrategy reads (worker 0
acts as chief) and replaces itself with the trainer::

    python -m deploy.tf_config --job-name J --service S --workers 2 -- python -m trainer.task ...

Standard library only: it runs before anything heavy is imported.
"""

import json
import os
import sys

from contracts import cli


def worker_hosts(*, job_name, service, namespace, workers, port):
    """Returns ``host:port`` of every worker, in index order."""
    return [f"{job_name}-{index}.{service}.{namespace}.svc:{port}" for index in range(workers)]


def build_tf_config(index, *, job_name, service, namespace, workers, port):
    """Returns the ``TF_CONFIG`` dict of worker ``index``.

    Raises:
        ValueError: ``index`` is not in ``[0, workers)``.
    """
    if not 0 <= index < workers:
        raise ValueError(f"completion index {index} is outside 0..{workers - 1}")
    hosts = worker_hosts(job_name=job_name, service=service, namespace=namespace, workers=workers, port=port)
    return {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}


def _parser():
    parser = cli.ArgumentParser(prog="python -m deploy.tf_config", description=__doc__.split("\n\n")[0])
    parser.add_argument("--job-name", required=True, help="the Indexed Job's name (pod hostname prefix)")
    parser.add_argument("--service", required=True, help="the headless Service named by the pods' subdomain")
    parser.add_argument("--workers", type=int, required=True, help="the Job's completions")
    parser.add_argument("--port", type=int, default=2222)
    parser.add_argument(
        "--namespace", default=os.environ.get("POD_NAMESPACE", "default"), help="default: $POD_NAMESPACE"
    )
    return parser


def main(argv=None):
    """Parses ``FLAGS -- COMMAND...``, exports ``TF_CONFIG`` and execs COMMAND."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if "--" not in argv:
        parser.error("expected '-- COMMAND ...' after the flags")
    split = argv.index("--")
    args, command = parser.parse_args(argv[:split]), argv[split + 1 :]
    if not command:
        parser.error("no command after '--'")
    raw_index = os.environ.get("JOB_COMPLETION_INDEX", "")
    if not raw_index.isdigit():
        parser.error(f"JOB_COMPLETION_INDEX must be set to a number (an Indexed Job pod), got {raw_index!r}")
    try:
        tf_config = build_tf_config(
            int(raw_index),
            job_name=args.job_name,
            service=args.service,
            namespace=args.namespace,
            workers=args.workers,
            port=args.port,
        )
    except ValueError as error:
        parser.error(str(error))
    os.environ["TF_CONFIG"] = json.dumps(tf_config)
    sys.stdout.flush()
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
