"""Kubernetes manifests that run the trainer on a GKE cluster with GPUs.

One machine is a plain ``batch/v1`` Job whose pod asks for ``nvidia.com/gpu``
and runs the image's entry point (MirroredStrategy). Several machines are an
Indexed Job (``completions = parallelism = workers``) plus a headless Service:
every pod wraps the trainer in :mod:`deploy.tf_config`, which builds
``TF_CONFIG`` from ``JOB_COMPLETION_INDEX`` and the Service's DNS names
(MultiWorkerMirroredStrategy). Kubeflow's TFJob is not needed.

Every pod runs under Kubernetes' "restricted" Pod Security Standard
(:func:`pod_security_context`, :func:`container_security_context`): not as
root (the image's ``USER``), no privilege escalation, no Linux capabilities,
the runtime's default seccomp profile, and a read-only root file system. The
job dir of a cloud job is ``gs://`` (:func:`deploy.checks.require_gcs`); what
the trainer writes locally (the job dir's staging folder, temporary files,
Keras' and CUDA's caches below ``HOME``) goes to the two ``emptyDir`` volumes
of :data:`SCRATCH_VOLUMES`, mounted at ``/tmp`` and at the image's home folder.
"""

import yaml

ACCELERATOR_LABEL = "cloud.google.com/gke-accelerator"
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
GPU_RESOURCE = "nvidia.com/gpu"
# In-place restarts keep an Indexed Job pod's hostname, so the other workers
# find it again and training resumes from the backup in the job dir.
RESTART_BACKOFF_LIMIT = 3
# Writable scratch on a read-only root file system: volume name -> mount path. /home/trainer is the
# Dockerfile's trainer user's HOME and WORKDIR (Keras' and CUDA's caches, a relative path's files).
SCRATCH_VOLUMES = {"tmp": "/tmp", "home": "/home/trainer"}


def pod_security_context():
    """The pod's securityContext: never root, the container runtime's default seccomp profile."""
    return {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}


def container_security_context():
    """The trainer container's securityContext: no privilege escalation, no capabilities, read-only root."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
    }


def labels(job):
    """Returns the labels shared by the Job, its pods and the Service."""
    return {
        "app.kubernetes.io/name": "tiny-inception",
        "app.kubernetes.io/component": "trainer",
        "app.kubernetes.io/instance": job.name,
        "tiny-inception/arch": job.arch.replace("_", "-"),
    }


def _metadata(spec):
    return {"name": spec.job.name, "namespace": spec.namespace, "labels": labels(spec.job)}


def container(spec):
    """Returns the trainer container; multi-worker pods exec it through deploy.tf_config."""
    job, machines = spec.job, spec.job.machines
    result = {"name": "trainer", "image": job.image}
    if machines.workers > 1:
        result["command"] = [
            "python",
            "-m",
            "deploy.tf_config",
            "--job-name",
            job.name,
            "--service",
            job.name,
            "--workers",
            str(machines.workers),
            "--port",
            str(spec.port),
            "--",
            "python",
            "-m",
            "trainer.task",
        ]
    result["args"] = job.trainer_argv()
    # A restarted pod's trainer takes over the job dir's lease its earlier attempt left (contracts/lease.py).
    result["env"] = [{"name": "TRAINER_JOB_ID", "value": job.name}]
    if machines.workers > 1:
        result["ports"] = [{"name": "tf-worker", "containerPort": spec.port}]
        result["env"].append(
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}
        )
    if machines.gpus:
        result["resources"] = {"limits": {GPU_RESOURCE: machines.gpus}}
    result["securityContext"] = container_security_context()
    result["volumeMounts"] = [{"name": name, "mountPath": path} for name, path in SCRATCH_VOLUMES.items()]
    return result


def pod_spec(spec):
    """Returns the pod spec: security context, scratch volumes, GPU node selector and toleration,
    service account, restart policy."""
    job, machines = spec.job, spec.job.machines
    result = {
        "restartPolicy": "OnFailure" if job.restart_on_worker_restart else "Never",
        "securityContext": pod_security_context(),
        "containers": [container(spec)],
        "volumes": [{"name": name, "emptyDir": {}} for name in SCRATCH_VOLUMES],
    }
    selector = {}
    if machines.gpus:
        selector[ACCELERATOR_LABEL] = machines.gpu_type
        result["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    if machines.machine_type:
        selector[INSTANCE_TYPE_LABEL] = machines.machine_type
    if selector:
        result["nodeSelector"] = selector
    if job.service_account:
        result["serviceAccountName"] = job.service_account
    if machines.workers > 1:
        result["subdomain"] = job.name
    return result


def job_manifest(spec):
    """Returns the ``batch/v1`` Job (Indexed when ``workers > 1``)."""
    job, workers = spec.job, spec.job.machines.workers
    job_spec = {
        "backoffLimit": RESTART_BACKOFF_LIMIT if job.restart_on_worker_restart else 0,
        "template": {"metadata": {"labels": labels(job)}, "spec": pod_spec(spec)},
    }
    if workers > 1:
        job_spec.update(completionMode="Indexed", completions=workers, parallelism=workers)
    if job.timeout_seconds:
        job_spec["activeDeadlineSeconds"] = job.timeout_seconds
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": _metadata(spec), "spec": job_spec}


def service_manifest(spec):
    """Returns the headless Service that gives each worker pod a stable DNS name."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(spec),
        "spec": {
            "clusterIP": "None",
            # Workers must resolve each other before any of them is "ready".
            "publishNotReadyAddresses": True,
            "selector": {"app.kubernetes.io/instance": spec.job.name},
            "ports": [{"name": "tf-worker", "port": spec.port, "targetPort": spec.port}],
        },
    }


def build_manifests(spec):
    """Returns the manifests of a :class:`deploy.config.GkeJob`, in apply order."""
    if spec.job.machines.workers == 1:
        return [job_manifest(spec)]
    return [service_manifest(spec), job_manifest(spec)]


def to_yaml(manifests):
    """Renders manifests as one multi-document YAML string."""
    return yaml.safe_dump_all(manifests, sort_keys=False)


def apply(spec, manifests):
    """Creates the manifests with the Kubernetes client (in-cluster or current kubeconfig context).

    Returns:
        ``"kind/name"`` of every created object.
    """
    from kubernetes import client, utils
    from kubernetes import config as kube_config

    try:
        kube_config.load_incluster_config()
    except kube_config.ConfigException:
        kube_config.load_kube_config()
    api = client.ApiClient()
    created = []
    for manifest in manifests:
        utils.create_from_dict(api, manifest, namespace=spec.namespace)
        created.append(f"{manifest['kind'].lower()}/{manifest['metadata']['name']}")
    return created
