"""DockerOperator settings for the trainer images, and the two container tasks of ``grounding_train``.

``docker_kwargs()`` is the single place that decides how a trainer container runs: the image by
engine (overridable by an Airflow Variable), GPUs only on the gpu engine and only as many as the
plan asks for (training: the spec's ``gpus_per_node``; each evaluation: one, since vLLM takes most
of its GPU's memory), the shared memory NCCL and the dataloaders need, host networking, a container
name unique per try, removal afterwards, the command as an argument list, credentials as private
environment (never in the command or the rendered templates), a non-root user, nothing privileged,
no Docker socket and no host path mount. GPU training writes its checkpoints to a named Docker
volume mounted at the work folder (outside the container layer; reused, not accumulated, by the
next run). It is a plain function, testable without Airflow running.

Both operators run in the Airflow pool ``GPU_POOL`` (one slot: a GPU node runs one trainer
container at a time), and the mapped evaluations run one at a time.

``TrainContainerOperator`` and ``EvaluateContainerOperator`` are DockerOperators that receive a
``plan`` (built by :mod:`grounding_ops.pipeline.train_tasks`) at run time, apply ``docker_kwargs``,
run the container, then read what it wrote (``run.json`` / ``metrics.json``) and return a summary.
They carry the W&B / MLflow / dataset manifest extra links and report OpenLineage inputs/outputs.
``on_kill`` is DockerOperator's: it stops the container (and removes it, auto_remove="force").
The daemon is the local socket unless ``docker_conn_id`` (or the Variable
``grounding_docker_conn_id``) names a connection to a GPU node's daemon over TLS
(:mod:`grounding_ops.pipeline.docker_daemon`); names, ``on_kill`` and removal act on that daemon.

Queues: the DAG puts these container tasks on the executor queue ``gpu_queue()``
(``GROUNDING_OPS_GPU_QUEUE``, default ``gpu``) so that a CeleryExecutor deployment runs them on
the workers of the GPU nodes (``airflow celery worker --queues gpu``); every other task stays on
the default queue. LocalExecutor ignores queues, so the laptop profile is unchanged.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from functools import cached_property
from typing import Any, Mapping, Sequence

from airflow.providers.docker.hooks.docker import DockerHook
from airflow.providers.docker.operators.docker import DockerOperator

from grounding_ops.pipeline.links import DatasetManifestLink, MlflowRunLink, WandbRunLink
from grounding_ops.pipeline.lineage import operator_lineage
from grounding_ops.pipeline.train_params import GPU_POOL, GPU_POOL_SLOTS  # noqa: F401  (the DAG's pool)

DEFAULT_IMAGES: dict[str, str] = {
    "cpu": "grounding-ops/trainer-cpu:latest",
    "gpu": "grounding-ops/trainer-verl:latest",
}
# Airflow Variables that override the image per engine (e.g. a registry path with a digest).
IMAGE_VARIABLES: dict[str, str] = {"cpu": "grounding_trainer_image_cpu", "gpu": "grounding_trainer_image_gpu"}
S3_CONN_ID = "grounding_s3"
WANDB_VARIABLE = "grounding_wandb_api_key"
CONTAINER_USER = "1000:1000"
GPU_QUEUE_ENV = "GROUNDING_OPS_GPU_QUEUE"
DEFAULT_GPU_QUEUE = "gpu"
_NAME_BAD = re.compile(r"[^A-Za-z0-9_.-]+")
_MAX_NAME = 120
# Shared memory of GPU containers (NCCL, dataloader workers), in bytes (DockerOperator's unit);
# docker/trainer/Dockerfile.verl's example `docker run --shm-size 16g` uses the same value.
GPU_SHM_GB = 16
GPU_SHM_SIZE = GPU_SHM_GB * 1024**3
WORK_DIR = "/work"  # the trainer images' GROUNDING_OPS_WORK_DIR
# Keys that must never be passed as plain (rendered, logged) environment.
_SECRET_HINTS = ("SECRET", "PASSWORD", "TOKEN", "API_KEY", "ACCESS_KEY", "SESSION")


def gpu_queue() -> str:
    """The executor queue of the GPU tasks (train, evaluations): ``GROUNDING_OPS_GPU_QUEUE`` or ``gpu``.

    Read when the DAG file is parsed: set it alike for the dag-processor, scheduler and workers.
    """
    queue = os.environ.get(GPU_QUEUE_ENV, "").strip() or DEFAULT_GPU_QUEUE
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", queue):
        raise ValueError(f"{GPU_QUEUE_ENV}={queue!r} is not a queue name: use letters, digits, '_', '.', '-'")
    return queue


def container_name(dag_id: str, run_id: str, task_id: str, try_number: int, map_index: int = -1) -> str:
    """A Docker container name unique per DAG run, task, map index and try.

    Docker names allow ``[a-zA-Z0-9][a-zA-Z0-9_.-]*``; anything else becomes ``-``. Long names are
    shortened with a hash of the full identity so two tries never collide.
    """
    parts = [dag_id, run_id, task_id]
    if map_index >= 0:
        parts.append(f"m{map_index}")
    parts.append(f"t{try_number}")
    raw = "-".join(parts)
    name = _NAME_BAD.sub("-", raw).strip("-.") or "task"
    if not name[0].isalnum():
        name = "g" + name
    if len(name) > _MAX_NAME:
        digest = hashlib.sha256(raw.encode()).hexdigest()[:12]
        name = f"{name[: _MAX_NAME - 13].rstrip('-.')}-{digest}"
    return name


def resolve_image(engine: str, override: str | None = None) -> str:
    """The trainer image for ``engine`` (``gpu``/``cpu``), or ``override`` (an Airflow Variable's value)."""
    if engine not in DEFAULT_IMAGES:
        raise ValueError(f"engine {engine!r} is unknown: use one of {', '.join(DEFAULT_IMAGES)}")
    image = (override or "").strip() or DEFAULT_IMAGES[engine]
    if any(c.isspace() for c in image) or image.startswith("-"):
        raise ValueError(f"image {image!r} is not a Docker image reference; fix Variable {IMAGE_VARIABLES[engine]}")
    return image


def s3_environment(login: str | None, password: str | None, extra: Mapping[str, Any] | None) -> dict[str, str]:
    """boto3/MLflow environment variables from an Airflow AWS connection's fields."""
    extra = dict(extra or {})
    env: dict[str, str] = {}
    if login:
        env["AWS_ACCESS_KEY_ID"] = login
    if password:
        env["AWS_SECRET_ACCESS_KEY"] = password
    if extra.get("aws_session_token"):
        env["AWS_SESSION_TOKEN"] = str(extra["aws_session_token"])
    endpoint = extra.get("endpoint_url") or (extra.get("service_config") or {}).get("s3", {}).get("endpoint_url")
    if endpoint:
        env["AWS_ENDPOINT_URL"] = str(endpoint)
        env["MLFLOW_S3_ENDPOINT_URL"] = str(endpoint)
    region = extra.get("region_name")
    if region:
        env["AWS_DEFAULT_REGION"] = str(region)
    return env


def check_command(command: Sequence[str]) -> list[str]:
    """The command as a list of plain strings (refuses a shell string and control characters)."""
    if isinstance(command, str) or not isinstance(command, Sequence) or not command:
        raise ValueError("the container command must be a non-empty list of arguments, not a shell string")
    out = []
    for arg in command:
        if not isinstance(arg, str):
            raise ValueError(f"container command argument {arg!r} is not a string")
        if any(c in arg for c in "\x00\n\r"):
            raise ValueError(f"container command argument {arg!r} contains a control character")
        out.append(arg)
    return out


def docker_kwargs(
    *,
    engine: str,
    command: Sequence[str],
    container_name: str,
    private_environment: Mapping[str, str],
    environment: Mapping[str, str] | None = None,
    image: str | None = None,
    docker_url: str | None = None,
    gpus: int | None = None,
    work_volume: str | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``DockerOperator`` running a trainer image.

    ``gpus``: how many GPUs the gpu engine's container gets (required there: never "all", so two
    containers cannot both grab GPU 0). ``work_volume``: a named volume mounted at ``/work``.
    """
    from docker.types import DeviceRequest, Mount

    if engine == "gpu" and (not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 1):
        raise ValueError(f"a gpu container needs gpus >= 1 (training: gpus_per_node, evaluation: 1), got {gpus!r}")
    if work_volume is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", work_volume):
        raise ValueError(f"work volume {work_volume!r} is not a Docker volume name (no paths)")
    env = dict(environment or {})
    leaked = [k for k in env if any(h in k.upper() for h in _SECRET_HINTS)]
    if leaked:
        raise ValueError(f"{leaked} look like credentials: pass them as private_environment")
    kwargs: dict[str, Any] = {
        "image": resolve_image(engine, image),
        "command": check_command(command),
        "container_name": container_name,
        "environment": env,
        "private_environment": dict(private_environment),
        "network_mode": "host",
        "auto_remove": "force",
        "retrieve_output": False,
        "mount_tmp_dir": False,
        "mounts": [Mount(target=WORK_DIR, source=work_volume, type="volume")] if work_volume else [],
        "user": CONTAINER_USER,
        "privileged": False,
        "cap_add": None,
        "tty": False,
        "force_pull": False,
        "device_requests": [DeviceRequest(count=gpus, capabilities=[["gpu"]])] if engine == "gpu" else None,
        "shm_size": GPU_SHM_SIZE if engine == "gpu" else None,
    }
    if docker_url:
        kwargs["docker_url"] = docker_url
    return kwargs


# --------------------------------------------------------------------------- runtime lookups


def airflow_private_environment(s3_conn_id: str = S3_CONN_ID, wandb_variable: str = WANDB_VARIABLE) -> dict[str, str]:
    """Credentials for the container from the Airflow S3 connection and the W&B Variable."""
    from airflow.sdk import BaseHook, Variable

    conn = BaseHook.get_connection(s3_conn_id)
    env = s3_environment(conn.login, conn.password, conn.extra_dejson)
    key = Variable.get(wandb_variable, default=None)
    if key:
        env["WANDB_API_KEY"] = key
    return env


def image_override(engine: str) -> str | None:
    from airflow.sdk import Variable

    return Variable.get(IMAGE_VARIABLES[engine], default=None)


def s3_client(s3_conn_id: str = S3_CONN_ID) -> Any:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return S3Hook(aws_conn_id=s3_conn_id).get_conn()


# --------------------------------------------------------------------------- operators


def _map_index(ti: Any) -> int:
    index = getattr(ti, "map_index", None)
    return -1 if index is None else int(index)


class GroundingContainerOperator(DockerOperator):
    """A trainer-image container whose image, command and settings come from a run-time ``plan``.

    ``plan`` keys: ``engine`` (gpu/cpu), ``command`` (list), ``environment`` (non-secret), and what
    the subclass reads back (``output_uri`` ...). ``links`` keys: ``wandb``, ``mlflow``, ``manifest``.
    """

    template_fields: Sequence[str] = (*DockerOperator.template_fields, "plan")
    operator_extra_links = (WandbRunLink(), MlflowRunLink(), DatasetManifestLink())
    ui_color = "#d6eaf8"

    def __init__(self, *, plan: Any, s3_conn_id: str = S3_CONN_ID, wandb_variable: str = WANDB_VARIABLE,
                 docker_conn_id: str | None = None, **kwargs: Any) -> None:
        # The real image is set from the plan at run time; this only names the default.
        kwargs.setdefault("image", DEFAULT_IMAGES["cpu"])
        kwargs.setdefault("network_mode", "host")
        kwargs.setdefault("auto_remove", "force")
        kwargs.setdefault("mount_tmp_dir", False)
        kwargs.setdefault("user", CONTAINER_USER)
        super().__init__(**kwargs)
        self.plan = plan
        # The daemon to run on (grounding_ops.pipeline.docker_daemon), not DockerOperator's registry login.
        self.daemon_conn_id = docker_conn_id
        self.s3_conn_id = s3_conn_id
        self.wandb_variable = wandb_variable
        self.links: dict[str, str] = {}
        self.lineage_inputs: list[str] = []
        self.lineage_outputs: list[str] = []

    def apply_plan(self, context: Any) -> None:
        plan = dict(self.plan or {})
        if "engine" not in plan or "command" not in plan:
            raise ValueError(f"task {self.task_id}: the plan needs 'engine' and 'command', got keys {sorted(plan)}")
        ti = context["ti"]
        engine = plan["engine"]
        kwargs = docker_kwargs(
            engine=engine,
            command=plan["command"],
            container_name=container_name(ti.dag_id, ti.run_id, ti.task_id, ti.try_number, _map_index(ti)),
            private_environment=airflow_private_environment(self.s3_conn_id, self.wandb_variable),
            environment=plan.get("environment"),
            image=image_override(engine),
            gpus=plan.get("gpus") if engine == "gpu" else None,
            work_volume=plan.get("work_volume") if engine == "gpu" else None,
        )
        for key, value in kwargs.items():
            attr = "_private_environment" if key == "private_environment" else key
            setattr(self, attr, value)
        self.links = {k: v for k, v in (plan.get("links") or {}).items() if isinstance(v, str)}
        self.lineage_inputs = list(plan.get("inputs") or [])
        self.lineage_outputs = list(plan.get("outputs") or [])

    @cached_property
    def hook(self) -> DockerHook:
        """DockerOperator's hook, or one verifying a remote daemon against its connection's CA."""
        if not getattr(self, "_daemon_tls", False):
            return super().hook
        from grounding_ops.pipeline.docker_daemon import DaemonDockerHook

        tls = DockerHook.construct_tls_config(ca_cert=self.tls_ca_cert, client_cert=self.tls_client_cert,
                                              client_key=self.tls_client_key, verify=True)
        return DaemonDockerHook(base_url=self.docker_url, tls=tls, version=self.api_version, timeout=self.timeout)

    def use_daemon(self) -> Any:
        """Point this task at the daemon of its Docker connection; returns the TLS files to remove after."""
        from grounding_ops.pipeline.docker_daemon import TlsFiles, airflow_docker_daemon

        daemon = airflow_docker_daemon(self.daemon_conn_id)
        if daemon is None:
            return None
        self.docker_url = daemon.url
        files = TlsFiles(daemon) if daemon.tls else None
        self._daemon_tls = files is not None
        for key, value in (files.operator_kwargs() if files else {}).items():
            setattr(self, key, value)
        self.log.info("containers of %s run on the Docker daemon %s%s", self.task_id, daemon.url,
                      " (TLS, client certificate)" if files else "")
        return files

    def execute(self, context: Any) -> Any:
        self.apply_plan(context)
        tls_files = self.use_daemon()
        try:
            self.log.info("running %s in %s as container %s: %s", self.task_id, self.image, self.container_name,
                          " ".join(self.command))
            super().execute(context)
            return self.after_container(context)
        finally:
            if tls_files is not None:
                tls_files.remove()

    def after_container(self, context: Any) -> Any:  # pragma: no cover - overridden
        return None

    def get_openlineage_facets_on_start(self) -> Any:
        return operator_lineage(self.lineage_inputs, [])

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        return operator_lineage(self.lineage_inputs, self.lineage_outputs)


class TrainContainerOperator(GroundingContainerOperator):
    """``grounding-ops train`` in the trainer image; returns the run summary read from ``run.json``.

    With more than one node the same command is submitted to the Ray cluster of the
    ``grounding_ray`` connection (Ray Jobs API), and the task defers to
    :class:`~grounding_ops.pipeline.ray_trigger.RayJobTrigger` (run by the triggerer) until the job
    ends: no worker slot is held meanwhile. Killing the task stops the job, before and after the
    deferral. Credentials are not sent with the job (any Jobs API client can read a runtime_env):
    the Ray nodes provide them (see ``grounding_ops.training.ray_jobs``).
    """

    ray_poll_s = 15.0

    def execute(self, context: Any) -> Any:
        nodes = int(dict(self.plan or {}).get("nodes") or 1)
        if nodes <= 1:
            return super().execute(context)
        from grounding_ops.pipeline.ray_trigger import RayJobTrigger
        from grounding_ops.training import ray_jobs

        self.apply_plan(context)
        self._ray_address = ray_jobs.resolve_address()
        env, withheld = ray_jobs.shareable_env({**(self.environment or {}), **self._private_environment})
        # Container commands are arguments of the image's `grounding-ops` entrypoint.
        argv = ["grounding-ops", *self.command]
        self._ray_job = ray_jobs.submit_training(self._ray_address, argv, env_vars=env,
                                                 submission_id=self.container_name)
        self.log.info("submitted Ray job %s to %s: %s (env vars: %s)", self._ray_job, self._ray_address,
                      " ".join(argv), ", ".join(sorted(env)) or "none")
        if withheld:
            self.log.info("not sent to Ray (the Jobs API shows a job's runtime_env to any client): %s; "
                          "the Ray nodes must provide them", ", ".join(withheld))
        timeout = self.execution_timeout.total_seconds() if self.execution_timeout else None
        self.defer(trigger=RayJobTrigger(self._ray_address, self._ray_job, poll_s=self.ray_poll_s,
                                         deadline=time.time() + timeout if timeout else None),
                   method_name="execute_complete")

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        """Resumed by the triggerer's event: the Ray job ended (or timed out, or was unreachable)."""
        from grounding_ops.training import ray_jobs

        self.apply_plan(context)
        job_id, address = event["job_id"], event["address"]
        try:
            self.log.info("last lines of Ray job %s:\n%s", job_id, ray_jobs.log_tail(ray_jobs.job_logs(address, job_id)))
        except Exception as exc:  # noqa: BLE001 - the logs are a courtesy; the status decides
            self.log.warning("could not read the log of Ray job %s: %s", job_id, exc)
        if event["status"] != "SUCCEEDED":
            raise ray_jobs.RayJobError(f"{event['message']}; see `ray job logs {job_id}` on the cluster")
        return self.after_container(context)

    def on_kill(self) -> None:
        if getattr(self, "_ray_job", None):
            from grounding_ops.training import ray_jobs

            self.log.info("stopping Ray job %s", self._ray_job)
            ray_jobs.stop_job(self._ray_address, self._ray_job)
            return
        super().on_kill()

    def after_container(self, context: Any) -> Any:
        from grounding_ops.pipeline import train_tasks
        from grounding_ops.storage import open_store

        plan = dict(self.plan)
        store = open_store(plan["output_uri"], s3_client=s3_client(self.s3_conn_id))
        summary = train_tasks.read_training_result(store, plan)
        summary = train_tasks.record_training(store, summary, plan, tracking_uri=train_tasks.mlflow_tracking_uri())
        self.links["mlflow"] = summary["mlflow_url"]
        if summary.get("wandb_url"):
            self.links["wandb"] = summary["wandb_url"]
        self.lineage_outputs = [plan["output_uri"]]
        self.log.info(train_tasks.training_summary_line(summary))
        return summary


class EvaluateContainerOperator(GroundingContainerOperator):
    """``grounding-ops evaluate`` in the trainer image, then the evaluation is logged to MLflow."""

    def after_container(self, context: Any) -> Any:
        from grounding_ops.pipeline import train_tasks
        from grounding_ops.storage import open_store

        plan = dict(self.plan)
        store = open_store(plan["output_uri"], s3_client=s3_client(self.s3_conn_id))
        result = train_tasks.record_evaluation(store, plan, tracking_uri=train_tasks.mlflow_tracking_uri())
        if result.get("mlflow_url"):
            self.links["mlflow"] = result["mlflow_url"]
        self.lineage_outputs = [plan["output_uri"]]
        if result.get("mlflow_model_uri"):
            self.lineage_outputs.append(result["mlflow_model_uri"])
        self.log.info(train_tasks.evaluation_summary_line(result))
        return result
