"""Runs the preprocessing Beam job (``python -m preprocessing.task``) on Dataflow."""

import shlex

from deploy import checks

MODULE = "preprocessing.task"


def build_argv(spec):
    """Returns the ``preprocessing.task`` argument list for a :class:`deploy.config.DataflowJob`.

    The job's own flags come first, then Beam's Dataflow options, then the
    extra flags given after ``--``.
    """
    argv = [
        "--raw-dir",
        spec.raw_dir,
        "--output-dir",
        spec.output_dir,
        "--runner",
        "DataflowRunner",
        "--project",
        spec.project,
        "--region",
        spec.region,
        "--temp_location",
        spec.temp_location,
        "--job_name",
        spec.name,
        "--setup_file",
        spec.setup_file,
        "--max_num_workers",
        str(spec.max_num_workers),
        "--machine_type",
        spec.machine_type,
    ]
    if spec.service_account:
        argv += ["--service_account_email", spec.service_account]
    return argv + list(spec.beam_args)


def check_argv(argv):
    """Parses ``argv`` as ``preprocessing.task`` does before it runs, reading and launching nothing.

    The job's parser, its Beam-option check and ``JobConfig``'s value checks
    (``preprocessing.flags.parse_args``) judge the whole argument list, so a
    misspelt or bad flag after ``--`` fails here rather than on Dataflow.

    Raises:
        deploy.checks.ConfigError: ``preprocessing flags after --: <message>``.
    """
    # The job's flags only (Beam's pipeline options, no transforms, no TensorFlow).
    from preprocessing import flags

    try:
        # Usage errors as a message first: parse_args' own parser prints them and exits.
        checks.parse_known(flags.build_parser(), argv)
        flags.parse_args(argv)
    except ValueError as error:
        message = " ".join(str(error).split())
        raise checks.ConfigError(f"preprocessing flags after --: {message}") from None


def command_line(argv):
    """Returns the shell command that runs the job with ``argv``."""
    return shlex.join(["python", "-m", MODULE, *argv])


def run(argv):
    """Runs the pipeline in this process (imported lazily: Beam is heavy); returns its exit status."""
    from preprocessing import task

    return task.run(argv)
