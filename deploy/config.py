"""Frozen, validated specifications of the jobs the deploy CLI launches.

Only :mod:`deploy.submit` parses flags; it builds these dataclasses and the
spec builders (:mod:`deploy.vertex`, :mod:`deploy.gke`, :mod:`deploy.hptune`,
:mod:`deploy.dataflow`, :mod:`deploy.staging`) read nothing else. Every
invalid value raises :class:`deploy.checks.ConfigError` with a one-line
message that the CLI prints as is.
"""

import dataclasses
import os
import re

from deploy import checks


@dataclasses.dataclass(frozen=True)
class Machines:
    """The hardware layout: ``workers`` machines with ``gpus`` GPUs each.

    Attributes:
        workers: machines; 1 trains with MirroredStrategy, more with
            MultiWorkerMirroredStrategy.
        gpus: GPUs per machine (0 trains on CPU).
        gpu_type: a :data:`checks.GPU_TYPES` key (either spelling accepted);
            defaults to :data:`checks.DEFAULT_GPU_TYPE` when ``gpus > 0``.
        machine_type: Compute Engine machine type, or None for the target's default.
    """

    workers: int = 1
    gpus: int = 1
    gpu_type: str | None = None
    machine_type: str | None = None

    def __post_init__(self):
        checks.require(self.workers >= 1, f"--workers must be at least 1, got {self.workers}")
        checks.require(self.gpus >= 0, f"--gpus must be 0 or more, got {self.gpus}")
        if self.gpus == 0:
            checks.require(self.gpu_type is None, f"--gpu-type {self.gpu_type} given with --gpus 0")
        else:
            gpu_type = checks.normalize_gpu_type(self.gpu_type or checks.DEFAULT_GPU_TYPE)
            object.__setattr__(self, "gpu_type", gpu_type)
        if self.machine_type is not None:
            checks.require(
                re.match(r"^[a-z][-a-z0-9]+$", self.machine_type) is not None,
                f"bad --machine-type {self.machine_type!r}",
            )

    @property
    def strategy(self):
        """The trainer's ``--strategy`` value for this layout."""
        return "mirrored" if self.workers == 1 else "multi_worker"

    @property
    def vertex_accelerator(self):
        """The Vertex AI AcceleratorType name, or None on CPU."""
        return checks.GPU_TYPES[self.gpu_type] if self.gpu_type else None


@dataclasses.dataclass(frozen=True)
class TrainJob:
    """What every training launcher needs, whatever the cluster.

    Attributes:
        name: job name, a DNS-1035 label (Kubernetes object and display name).
        image: container image with a tag or digest.
        arch: architecture name known to the trainer.
        data_dir: ``gs://`` folder with TFRecords and metadata.json.
        job_dir: ``gs://`` folder for checkpoints, logs and the exported model.
        machines: hardware layout.
        service_account: Vertex: a service account e-mail; GKE: the
            Kubernetes service account bound to one via Workload Identity.
        restart_on_worker_restart: restart the whole job when a worker restarts.
        timeout_seconds: maximum run time, or None for the target's default.
        trainer_args: extra flags passed to ``trainer.task`` verbatim; checked
            with the trainer's parser and value checks
            (:func:`deploy.checks.check_trainer_flags`).
    """

    name: str
    image: str
    arch: str
    data_dir: str
    job_dir: str
    machines: Machines = Machines()
    service_account: str | None = None
    restart_on_worker_restart: bool = False
    timeout_seconds: int | None = None
    trainer_args: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "trainer_args", tuple(self.trainer_args))
        checks.require(
            len(self.name) <= checks.MAX_NAME_LENGTH and checks.DNS_LABEL.match(self.name) is not None,
            f"--name {self.name!r} must be lowercase letters, digits and '-', start with a letter, "
            f"at most {checks.MAX_NAME_LENGTH} characters",
        )
        checks.require(
            bool(self.image)
            and not re.search(r"\s", self.image)
            and re.search(r"(:[^/]+|@sha256:.+)$", self.image),
            f"--image {self.image!r} must name a tag or digest (e.g. REGISTRY/IMAGE:TAG)",
        )
        checks.check_architecture(self.arch)
        checks.require_gcs("--data-dir", self.data_dir)
        checks.require_gcs("--job-dir", self.job_dir)
        checks.require(
            self.timeout_seconds is None or self.timeout_seconds > 0,
            f"--timeout must be positive, got {self.timeout_seconds}",
        )
        for arg in self.trainer_args:
            flag = arg.split("=", 1)[0]
            reserved = flag in checks.RESERVED_TRAINER_FLAGS
            checks.require(not reserved, f"{flag} is set by the launcher; drop it after '--'")
        # The trainer's own parser and value checks, so a typo fails here, not minutes into the job.
        checks.check_trainer_flags(self.trainer_argv())

    def trainer_argv(self):
        """Returns the argument list of ``python -m trainer.task``."""
        return [
            "--arch",
            self.arch,
            "--data-dir",
            self.data_dir,
            "--job-dir",
            self.job_dir,
            "--strategy",
            self.machines.strategy,
            *self.trainer_args,
        ]


@dataclasses.dataclass(frozen=True)
class VertexJob:
    """A Vertex AI CustomJob: a :class:`TrainJob` in a project and region.

    Attributes:
        job: what to train and on which machines.
        project: Google Cloud project id.
        region: Vertex AI region, e.g. ``us-central1``.
        tensorboard: a Vertex AI TensorBoard instance id or full resource
            name; normalized to ``projects/P/locations/R/tensorboards/ID``.
    """

    job: TrainJob
    project: str
    region: str
    tensorboard: str | None = None

    def __post_init__(self):
        checks.check_pattern(checks.PROJECT, self.project, "--project")
        checks.check_pattern(checks.REGION, self.region, "--region")
        account = self.job.service_account
        checks.require(
            account is None or checks.SA_EMAIL.match(account) is not None,
            f"--service-account must be a service account e-mail for Vertex AI, got {account!r}",
        )
        if self.tensorboard is not None:
            name = self.tensorboard
            if name.isdigit():
                name = f"{self.parent}/tensorboards/{name}"
            checks.require(
                checks.TENSORBOARD.match(name) is not None,
                f"--tensorboard must be an instance id or projects/P/locations/R/tensorboards/ID, "
                f"got {name!r}",
            )
            # Vertex AI refuses TensorBoard uploads from the default agent.
            checks.require(account is not None, "--tensorboard needs --service-account on Vertex AI")
            object.__setattr__(self, "tensorboard", name)

    @property
    def parent(self):
        """The Vertex AI location the job is created in: ``projects/P/locations/R``."""
        return f"projects/{self.project}/locations/{self.region}"

    @property
    def machine_type(self):
        """The machine type of every worker pool."""
        return self.job.machines.machine_type or checks.DEFAULT_VERTEX_MACHINE_TYPE


@dataclasses.dataclass(frozen=True)
class GkeJob:
    """Kubernetes manifests for a :class:`TrainJob` on a GKE cluster with GPUs.

    Attributes:
        job: what to train and on which machines.
        namespace: Kubernetes namespace.
        port: port the TensorFlow workers talk on (multi-worker only).
    """

    job: TrainJob
    namespace: str = "default"
    port: int = checks.TF_PORT

    def __post_init__(self):
        checks.check_pattern(checks.DNS_LABEL, self.namespace, "--namespace")
        checks.require(0 < self.port < 65536, f"bad --port {self.port}")
        account = self.job.service_account
        checks.require(
            account is None or (checks.DNS_SUBDOMAIN.match(account) is not None and len(account) <= 253),
            f"--service-account must be a Kubernetes service account name on GKE, got {account!r}",
        )


@dataclasses.dataclass(frozen=True)
class TuneJob:
    """A Vertex AI hyperparameter tuning job over a :class:`VertexJob`.

    Attributes:
        vertex: the trial's CustomJob settings.
        max_trials: trials in total.
        parallel_trials: trials running at once.
        max_failed_trials: failures tolerated before the study stops (0: Vertex default).
    """

    vertex: VertexJob
    max_trials: int = 12
    parallel_trials: int = 3
    max_failed_trials: int = 0

    def __post_init__(self):
        checks.require(self.max_trials >= 1, f"--max-trials must be at least 1, got {self.max_trials}")
        checks.require(
            1 <= self.parallel_trials <= self.max_trials,
            f"--parallel-trials must be between 1 and --max-trials, got {self.parallel_trials}",
        )
        checks.require(
            self.max_failed_trials >= 0,
            f"--max-failed-trials must be 0 or more, got {self.max_failed_trials}",
        )
        # The fixed flags were checked with the TrainJob; the tuned ones have no value until a trial.
        for arg in self.vertex.job.trainer_args:
            flag = arg.split("=", 1)[0]
            checks.require(
                flag not in checks.TUNED_TRAINER_FLAGS,
                f"{flag} is tuned: every trial passes its own value; drop it after '--'",
            )


@dataclasses.dataclass(frozen=True)
class DataflowJob:
    """The preprocessing Beam job on Dataflow.

    Attributes:
        raw_dir: ``gs://`` folder of the extracted raw dataset (Dataflow workers
            cannot read an archive that preprocessing.task extracts locally).
        output_dir: ``gs://`` folder for TFRecords and metadata.json.
        project: Google Cloud project id.
        region: Dataflow region.
        temp_location: ``gs://`` scratch folder for Dataflow.
        name: Dataflow job name.
        setup_file: ``setup.py`` shipped to the workers.
        max_num_workers: autoscaling ceiling.
        machine_type: worker machine type.
        service_account: worker service account e-mail, or None for the default.
        beam_args: extra flags passed to ``preprocessing.task`` verbatim.
    """

    raw_dir: str
    output_dir: str
    project: str
    region: str
    temp_location: str
    name: str
    setup_file: str = "./setup.py"
    max_num_workers: int = 8
    machine_type: str = "n1-standard-4"
    service_account: str | None = None
    beam_args: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "beam_args", tuple(self.beam_args))
        checks.require_gcs("--raw-dir", self.raw_dir)
        # preprocessing.task refuses archives with a remote runner; say so before launching.
        checks.require(
            not self.raw_dir.lower().endswith(".zip"),
            f"--raw-dir must be an extracted gs:// folder for Dataflow, not an archive; got {self.raw_dir!r}",
        )
        checks.require_gcs("--output-dir", self.output_dir)
        checks.require_gcs("--temp-location", self.temp_location)
        checks.check_pattern(checks.PROJECT, self.project, "--project")
        checks.check_pattern(checks.REGION, self.region, "--region")
        checks.check_pattern(checks.DNS_LABEL, self.name, "--name")
        checks.require(
            self.max_num_workers >= 1, f"--max-num-workers must be at least 1, got {self.max_num_workers}"
        )
        checks.require(
            self.service_account is None or checks.SA_EMAIL.match(self.service_account) is not None,
            f"--service-account must be a service account e-mail, got {self.service_account!r}",
        )


@dataclasses.dataclass(frozen=True)
class StageJob:
    """Copy a local folder to ``gs://bucket/prefix``.

    Attributes:
        src: local folder.
        dest: ``gs://bucket[/prefix]``.
        resumable_threshold: files at least this many bytes use resumable uploads.
        chunk_size: resumable chunk size in bytes (a multiple of 256 KiB).
        project: project for the storage client, or None for the default.
    """

    src: str
    dest: str
    resumable_threshold: int = 8 * 1024 * 1024
    chunk_size: int = 8 * 1024 * 1024
    project: str | None = None

    def __post_init__(self):
        checks.require(os.path.isdir(self.src), f"--src {self.src!r} is not a folder")
        checks.require_gcs("--dest", self.dest)
        checks.require(self.resumable_threshold > 0, "--resumable-threshold must be positive")
        checks.require(
            self.chunk_size > 0 and self.chunk_size % (256 * 1024) == 0,
            f"--chunk-size must be a positive multiple of 262144, got {self.chunk_size}",
        )
