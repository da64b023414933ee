"""Vertex AI CustomJob specs for the trainer, and their submission.

One machine trains with MirroredStrategy over its GPUs. Several machines
become a chief pool (one replica) plus a worker pool (``workers - 1``
replicas); Vertex AI then sets ``TF_CONFIG`` with the ``chief`` and ``worker``
tasks that MultiWorkerMirroredStrategy reads. ``job_dir`` becomes
``base_output_directory``, so Vertex AI sets ``AIP_MODEL_DIR``,
``AIP_CHECKPOINT_DIR`` and ``AIP_TENSORBOARD_LOG_DIR`` under it.
"""

from google.cloud import aiplatform_v1
from google.protobuf import duration_pb2


def worker_pool_specs(spec):
    """Returns the WorkerPoolSpecs of a :class:`deploy.config.VertexJob`.

    Args:
        spec: the job.

    Returns:
        One pool for a single machine, else a chief pool and a worker pool;
        every pool runs the image's entry point with the same arguments.
    """
    machines = spec.job.machines
    machine_spec = aiplatform_v1.MachineSpec(machine_type=spec.machine_type)
    if machines.gpus:
        machine_spec.accelerator_type = aiplatform_v1.AcceleratorType[machines.vertex_accelerator]
        machine_spec.accelerator_count = machines.gpus
    container = aiplatform_v1.ContainerSpec(image_uri=spec.job.image, args=spec.job.trainer_argv())
    replica_counts = [1] if machines.workers == 1 else [1, machines.workers - 1]
    return [
        aiplatform_v1.WorkerPoolSpec(machine_spec=machine_spec, replica_count=count, container_spec=container)
        for count in replica_counts
    ]


def custom_job_spec(spec):
    """Returns the ``CustomJobSpec`` of a :class:`deploy.config.VertexJob`.

    Shared by the CustomJob and the hyperparameter tuning job's trials.
    """
    job = spec.job
    scheduling = aiplatform_v1.Scheduling(restart_job_on_worker_restart=job.restart_on_worker_restart)
    if job.timeout_seconds:
        scheduling.timeout = duration_pb2.Duration(seconds=job.timeout_seconds)
    job_spec = aiplatform_v1.CustomJobSpec(
        worker_pool_specs=worker_pool_specs(spec),
        base_output_directory=aiplatform_v1.GcsDestination(output_uri_prefix=job.job_dir),
        scheduling=scheduling,
    )
    if job.service_account:
        job_spec.service_account = job.service_account
    if spec.tensorboard:
        job_spec.tensorboard = spec.tensorboard
    return job_spec


def job_labels(job):
    """Returns the labels of every Vertex AI job that trains :class:`deploy.config.TrainJob` ``job``."""
    return {"app": "tiny-inception", "arch": job.arch.replace("_", "-")}


def build_custom_job(spec):
    """Returns the ``aiplatform_v1.CustomJob`` for a :class:`deploy.config.VertexJob`."""
    return aiplatform_v1.CustomJob(
        display_name=spec.job.name,
        job_spec=custom_job_spec(spec),
        labels=job_labels(spec.job),
    )


def to_json(message):
    """Serializes a Vertex AI proto-plus message as indented JSON (enums by name)."""
    return type(message).to_json(
        message, use_integers_for_enums=False, indent=2, always_print_fields_with_no_presence=False
    )


def job_service_client(region):
    """Returns a JobServiceClient bound to the regional Vertex AI endpoint."""
    return aiplatform_v1.JobServiceClient(
        client_options={"api_endpoint": f"{region}-aiplatform.googleapis.com"}
    )


def submit(spec, custom_job):
    """Creates ``custom_job`` in the spec's project and region with Application Default Credentials.

    Returns:
        The resource name of the created job.
    """
    client = job_service_client(spec.region)
    return client.create_custom_job(parent=spec.parent, custom_job=custom_job).name
