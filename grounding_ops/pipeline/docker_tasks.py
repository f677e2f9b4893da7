"""DockerOperator settings for the trainer images, and the two container tasks of ``grounding_train``.

``docker_kwargs()`` and ``host_config_options()`` are the single place that decides how a trainer
container runs: the image by engine (overridable by an Airflow Variable), all GPUs only on the gpu
engine, the network (``GROUNDING_OPS_CONTAINER_NETWORK``: ``host`` for the local profile whose
dockerd has no bridge, a bridge network in deployments), a container name unique per try, removal
afterwards, the command as an argument list, a non-root user, nothing privileged, every capability
dropped, ``no-new-privileges``, pids and memory limits, no Docker socket and no temporary host mount.
They are plain functions, testable without Airflow running.

Credentials reach the container only as private environment (never in the command, the rendered
templates or XCom), through DockerOperator's public ``private_environment`` argument:
:class:`ContainerCredentials` is resolved when the container is created, on the worker, from
``AwsBaseHook.get_credentials()`` (so assume-role, web identity and profile connections work and
session tokens are included; the hook masks them) and the connection's S3 endpoint and region
with S3Hook's precedence. Containers get no MLflow settings: only the platform talks to MLflow.

GPU runs get only as many GPUs as the plan asks for (training: the spec's ``gpus_per_node``; each
evaluation: one, since vLLM takes most of its GPU's memory) and the shared memory NCCL and the
dataloaders need; GPU training writes its checkpoints to a named Docker volume mounted at the work
folder (outside the container layer; reused, not accumulated, by the next run). Both operators run
in the Airflow pool of :mod:`grounding_ops.pipeline.pools`, and the mapped evaluations run one at a
time.

``TrainContainerOperator`` and ``EvaluateContainerOperator`` are DockerOperators that receive a
``plan`` (built by :mod:`grounding_ops.pipeline.plans`) at run time, apply ``docker_kwargs``,
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
from dataclasses import replace
from functools import cached_property
from typing import Any, Callable, Iterator, Mapping, Sequence

from airflow.providers.docker.hooks.docker import DockerHook
from airflow.providers.docker.operators.docker import DockerOperator

from grounding_ops.pipeline.links import DatasetManifestLink, MlflowRunLink, WandbRunLink
from grounding_ops.pipeline.hooks import mlflow_tracking_uri, s3_client
from grounding_ops.pipeline.lineage import dataset_split_refs, operator_lineage
from grounding_ops.pipeline.task_records import ContainerPlan, EvaluationPlan, TrainingPlan
from grounding_ops.pipeline.trainer_images import (
    DEFAULT_IMAGES,
    image_override,
    image_reference,
    resolve_engine,
    resolve_image,
)
from grounding_ops.records import RecordError
from grounding_ops.vocabulary import IMAGE_ENV, S3_CONN_ID, TRAINING_SPLITS, WANDB_VARIABLE

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
NETWORK_ENV = "GROUNDING_OPS_CONTAINER_NETWORK"  # "host" (local profile, the default) or a bridge network
MEM_LIMIT_ENV = "GROUNDING_OPS_CONTAINER_MEM_LIMIT"  # e.g. "16g"; per-engine defaults below
PIDS_LIMIT_ENV = "GROUNDING_OPS_CONTAINER_PIDS_LIMIT"
DEFAULT_NETWORK = "host"
DEFAULT_MEM_LIMITS: dict[str, str] = {"cpu": "16g", "gpu": "512g"}
# Ray, vLLM and the data loaders of a GPU run start thousands of threads (each counts as a pid).
DEFAULT_PIDS_LIMITS: dict[str, int] = {"cpu": 4096, "gpu": 65536}
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


def s3_environment(
    access_key: str | None,
    secret_key: str | None,
    token: str | None = None,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
) -> dict[str, str]:
    """boto3 environment variables for credentials (a session token included), an endpoint and a region."""
    env: dict[str, str] = {}
    if access_key:
        env["AWS_ACCESS_KEY_ID"] = access_key
    if secret_key:
        env["AWS_SECRET_ACCESS_KEY"] = secret_key
    if token:
        env["AWS_SESSION_TOKEN"] = token
    if endpoint_url:
        env["AWS_ENDPOINT_URL"] = str(endpoint_url)
    if region:
        env["AWS_DEFAULT_REGION"] = str(region)
    return env


def container_network() -> str:
    """``GROUNDING_OPS_CONTAINER_NETWORK`` (default ``host``, the local profile's only network)."""
    network = (os.environ.get(NETWORK_ENV) or DEFAULT_NETWORK).strip()
    if not network or any(c.isspace() for c in network) or network.startswith("container:"):
        raise ValueError(f"{NETWORK_ENV}={network!r} is not a Docker network name: use host or a bridge network")
    return network


def _limit(name: str, default: Any) -> str:
    value = (os.environ.get(name) or "").strip()
    return value or str(default)


def host_config_options(engine: str) -> dict[str, Any]:
    """Docker host settings DockerOperator has no argument for: capabilities, privileges, pids."""
    try:
        pids = int(_limit(PIDS_LIMIT_ENV, DEFAULT_PIDS_LIMITS[engine]))
    except ValueError as exc:
        raise ValueError(f"{PIDS_LIMIT_ENV} must be a whole number of processes") from exc
    if pids < 64:
        raise ValueError(f"{PIDS_LIMIT_ENV}={pids} is too small for the trainer: use at least 64")
    return {"cap_drop": ["ALL"], "security_opt": ["no-new-privileges:true"], "pids_limit": pids}


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
    private_environment: Mapping[str, str] | None = None,
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
        "network_mode": container_network(),
        "mem_limit": _limit(MEM_LIMIT_ENV, DEFAULT_MEM_LIMITS[resolve_engine(engine)]),
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
    if private_environment is not None:
        kwargs["private_environment"] = private_environment
    if docker_url:
        kwargs["docker_url"] = docker_url
    return kwargs


# --------------------------------------------------------------------------- runtime lookups


def aws_environment(s3_conn_id: str = S3_CONN_ID) -> dict[str, str]:
    """Credentials, S3 endpoint and region for a container, from the Airflow AWS connection.

    The credentials are ``AwsBaseHook.get_credentials()``: after role assumption, web identity or a
    profile when the connection says so, frozen, session token included, masked in the task logs.
    Temporary credentials expire (an assumed role: 1 hour by default); for runs longer than that use
    an instance or pod role on the Docker host instead of keys (see docs/operations.md). The
    endpoint follows S3Hook: ``service_config.s3.endpoint_url`` before the connection's
    ``endpoint_url``.
    """
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    hook = S3Hook(aws_conn_id=s3_conn_id)
    credentials = hook.get_credentials()
    return s3_environment(
        credentials.access_key,
        credentials.secret_key,
        credentials.token,
        endpoint_url=hook.conn_config.get_service_endpoint_url("s3"),
        region=hook.conn_region_name,
    )


def airflow_private_environment(s3_conn_id: str = S3_CONN_ID, wandb_variable: str = WANDB_VARIABLE) -> dict[str, str]:
    """Credentials for the container: the Airflow S3 connection's and the W&B Variable's (masked)."""
    from airflow.sdk import Variable
    from airflow.sdk.log import mask_secret

    env = aws_environment(s3_conn_id)
    key = Variable.get(wandb_variable, default=None)
    if key:
        mask_secret(key)
        env["WANDB_API_KEY"] = key
    return env


class ContainerCredentials(Mapping[str, str]):
    """A container's private environment, looked up when the container is created (on the worker).

    Passed to DockerOperator's ``private_environment`` when the DAG is parsed; nothing is read then
    (the dag-processor never touches a secret and temporary credentials are fresh for each try).
    ``refresh()`` drops what was read, so each try gets new credentials.
    """

    def __init__(self, s3_conn_id: str = S3_CONN_ID, wandb_variable: str = WANDB_VARIABLE) -> None:
        self.s3_conn_id = s3_conn_id
        self.wandb_variable = wandb_variable
        self._env: dict[str, str] | None = None

    def refresh(self) -> None:
        self._env = None

    def _resolved(self) -> dict[str, str]:
        if self._env is None:
            self._env = airflow_private_environment(self.s3_conn_id, self.wandb_variable)
        return self._env

    def __bool__(self) -> bool:  # configured, whatever it resolves to (DockerOperator tests truthiness)
        return True

    def __getitem__(self, key: str) -> str:
        return self._resolved()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._resolved())

    def __len__(self) -> int:
        return len(self._resolved())

    def __repr__(self) -> str:  # never print the values
        return f"ContainerCredentials(s3_conn_id={self.s3_conn_id!r}, wandb_variable={self.wandb_variable!r})"

    def __deepcopy__(self, memo: dict) -> "ContainerCredentials":
        return ContainerCredentials(self.s3_conn_id, self.wandb_variable)


class LockedDownClient:
    """The Docker API client with the lock-down host settings added to every host config it builds."""

    def __init__(self, client: Any, host_options: Callable[[], Mapping[str, Any]]) -> None:
        self._client = client
        self._host_options = host_options

    def create_host_config(self, *args: Any, **kwargs: Any) -> Any:
        return self._client.create_host_config(*args, **{**kwargs, **self._host_options()})

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


# --------------------------------------------------------------------------- operators


def _map_index(ti: Any) -> int:
    index = getattr(ti, "map_index", None)
    return -1 if index is None else int(index)


def _argument(command: Sequence[str], flag: str) -> str | None:
    try:
        return str(command[list(command).index(flag) + 1])
    except (ValueError, IndexError):
        return None


class GroundingContainerOperator(DockerOperator):
    """A trainer-image container whose image, command and settings come from a run-time ``plan``.

    :param plan: a :class:`~grounding_ops.pipeline.task_records.ContainerPlan` of the subclass's
        ``plan_type``, or its dict form (the planning task's XCom value).
    :param s3_conn_id: the connection whose credentials the container gets.
    :param wandb_variable: the Variable holding the W&B API key, if any.
    :param docker_conn_id: a Docker connection naming the daemon to run on (default: the local one).
    """

    plan_type: type[ContainerPlan] = ContainerPlan

    template_fields: Sequence[str] = (*DockerOperator.template_fields, "plan")
    operator_extra_links = (WandbRunLink(), MlflowRunLink(), DatasetManifestLink())
    dataset_splits: tuple[str, ...] = ()  # the splits a container reads when its command names none
    ui_color = "#d6eaf8"

    def __init__(
        self,
        *,
        plan: Any,
        s3_conn_id: str = S3_CONN_ID,
        wandb_variable: str = WANDB_VARIABLE,
        docker_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        # The real image is set from the plan at run time; this only names the default.
        kwargs.setdefault("image", DEFAULT_IMAGES["cpu"])
        # Resolved on the worker when the container is created (see ContainerCredentials).
        credentials = kwargs.setdefault("private_environment", ContainerCredentials(s3_conn_id, wandb_variable))
        kwargs.setdefault("auto_remove", "force")
        kwargs.setdefault("mount_tmp_dir", False)
        kwargs.setdefault("user", CONTAINER_USER)
        super().__init__(**kwargs)
        self.credentials: Mapping[str, str] = credentials
        self.plan = plan
        # The daemon to run on (grounding_ops.pipeline.docker_daemon), not DockerOperator's registry login.
        self.daemon_conn_id = docker_conn_id
        self.s3_conn_id = s3_conn_id
        self.wandb_variable = wandb_variable
        self.links: dict[str, str] = {}
        self.lineage_inputs: list[str] = []
        self.lineage_outputs: list[str] = []
        self.host_options: dict[str, Any] = host_config_options("cpu")

    @cached_property
    def cli(self) -> Any:
        return LockedDownClient(super().cli, lambda: self.host_options)

    def container_environment(self) -> dict[str, str]:
        """The private environment the container gets (resolved now)."""
        return dict(self.credentials)

    def container_plan(self) -> Any:
        """The plan as its record (refused with the keys that do not match, never guessed)."""
        if isinstance(self.plan, self.plan_type):
            return self.plan
        try:
            return self.plan_type.from_dict(self.plan or {}, where=f"the plan of task {self.task_id}")
        except RecordError as exc:
            raise ValueError(str(exc)) from None

    def apply_plan(self, context: Any) -> None:
        plan = self.container_plan()
        ti = context["ti"]
        engine = plan.engine
        kwargs = docker_kwargs(
            engine=engine,
            command=plan.command,
            container_name=container_name(ti.dag_id, ti.run_id, ti.task_id, ti.try_number, _map_index(ti)),
            environment=plan.environment,
            image=image_override(engine),
            gpus=plan.gpus if engine == "gpu" else None,
            work_volume=getattr(plan, "work_volume", None) if engine == "gpu" else None,
        )
        for key, value in kwargs.items():
            setattr(self, key, value)
        # The exact image, recorded by the run (run.json, then the MLflow tags of its evaluations).
        self.image_ref = image_reference(self.image, lambda: self.cli)
        self.environment = {**self.environment, IMAGE_ENV: self.image_ref}
        self.host_options = host_config_options(engine)
        if isinstance(self.credentials, ContainerCredentials):
            self.credentials.refresh()  # fresh credentials for each try
        self.links = {k: v for k, v in plan.links.items() if isinstance(v, str)}
        self.lineage_inputs = [*plan.inputs, *self.dataset_files_read(plan)]
        self.lineage_outputs = list(plan.outputs)

    @cached_property
    def hook(self) -> DockerHook:
        """DockerOperator's hook, or one verifying a remote daemon against its connection's CA."""
        if not getattr(self, "_daemon_tls", False):
            return super().hook
        from grounding_ops.pipeline.docker_daemon import DaemonDockerHook

        tls = DockerHook.construct_tls_config(
            ca_cert=self.tls_ca_cert, client_cert=self.tls_client_cert, client_key=self.tls_client_key, verify=True
        )
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
        self.log.info(
            "containers of %s run on the Docker daemon %s%s",
            self.task_id,
            daemon.url,
            " (TLS, client certificate)" if files else "",
        )
        return files

    def execute(self, context: Any) -> Any:
        # The daemon first: the plan reads the image digest through the Docker client, which must be
        # the connection's daemon, not the local one.
        tls_files = self.use_daemon()
        try:
            self.apply_plan(context)
            self.log.info(
                "running %s in %s as container %s: %s",
                self.task_id,
                self.image,
                self.container_name,
                " ".join(self.command),
            )
            super().execute(context)
            return self.read_results(context)
        finally:
            if tls_files is not None:
                tls_files.remove()

    def dataset_files_read(self, plan: ContainerPlan) -> list[dict[str, Any]]:
        """The parquet files of the ``--dataset`` version the container reads (for lineage)."""
        command = list(plan.command)
        dataset = _argument(command, "--dataset")
        splits = (_argument(command, "--split"),) if "--split" in command else self.dataset_splits
        if not dataset or not dataset.startswith("s3://"):
            return []
        return dataset_split_refs(dataset, [s for s in splits if s], plan.dataset_version)

    def read_results(self, context: Any) -> Any:
        """:meth:`after_container`; a data error in what the container wrote fails at once."""
        from grounding_ops.pipeline.retry_policy import fail_fast

        try:
            return self.after_container(context)
        except Exception as exc:
            raised = fail_fast(exc)
            if raised is exc:
                raise
            raise raised from exc

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

    plan_type = TrainingPlan
    ray_poll_s = 15.0
    dataset_splits = TRAINING_SPLITS

    def execute(self, context: Any) -> Any:
        nodes = self.container_plan().nodes
        if nodes <= 1:
            return super().execute(context)
        from grounding_ops.pipeline.ray_trigger import RayJobTrigger
        from grounding_ops.training import ray_jobs

        self.apply_plan(context)
        self._ray_address = ray_jobs.resolve_address()
        env, withheld = ray_jobs.shareable_env({**(self.environment or {}), **self.container_environment()})
        # Container commands are arguments of the image's `grounding-ops` entrypoint.
        argv = ["grounding-ops", *self.command]
        self._ray_job = ray_jobs.submit_training(
            self._ray_address, argv, env_vars=env, submission_id=self.container_name
        )
        self.log.info(
            "submitted Ray job %s to %s: %s (env vars: %s)",
            self._ray_job,
            self._ray_address,
            " ".join(argv),
            ", ".join(sorted(env)) or "none",
        )
        if withheld:
            self.log.info(
                "not sent to Ray (the Jobs API shows a job's runtime_env to any client): %s; "
                "the Ray nodes must provide them",
                ", ".join(withheld),
            )
        timeout = self.execution_timeout.total_seconds() if self.execution_timeout else None
        self.defer(
            trigger=RayJobTrigger(
                self._ray_address,
                self._ray_job,
                poll_s=self.ray_poll_s,
                deadline=time.time() + timeout if timeout else None,
            ),
            method_name="execute_complete",
        )

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        """Resumed by the triggerer's event: the Ray job ended (or timed out, or was unreachable)."""
        from grounding_ops.training import ray_jobs

        self.apply_plan(context)
        job_id, address = event["job_id"], event["address"]
        try:
            self.log.info(
                "last lines of Ray job %s:\n%s", job_id, ray_jobs.log_tail(ray_jobs.job_logs(address, job_id))
            )
        except Exception as exc:  # noqa: BLE001 - the logs are a courtesy; the status decides
            self.log.warning("could not read the log of Ray job %s: %s", job_id, exc)
        if event["status"] != "SUCCEEDED":
            raise ray_jobs.RayJobError(f"{event['message']}; see `ray job logs {job_id}` on the cluster")
        return self.read_results(context)

    def on_kill(self) -> None:
        if getattr(self, "_ray_job", None):
            from grounding_ops.training import ray_jobs

            self.log.info("stopping Ray job %s", self._ray_job)
            ray_jobs.stop_job(self._ray_address, self._ray_job)
            return
        super().on_kill()

    def after_container(self, context: Any) -> Any:
        from grounding_ops.pipeline import results
        from grounding_ops.storage import open_store

        plan = self.container_plan()
        store = open_store(plan.output_uri, s3_client=s3_client(self.s3_conn_id))
        summary = replace(results.read_training_result(store, plan), image=self.image_ref)
        summary = results.record_training(store, summary, plan, tracking_uri=mlflow_tracking_uri())
        self.links["mlflow"] = summary.mlflow_url
        if summary.wandb_url:
            self.links["wandb"] = summary.wandb_url
        self.lineage_outputs = [plan.output_uri]
        self.log.info(results.training_summary_line(summary))
        return summary.to_dict()


class EvaluateContainerOperator(GroundingContainerOperator):
    """``grounding-ops evaluate`` in the trainer image, then the evaluation is logged to MLflow."""

    plan_type = EvaluationPlan

    def after_container(self, context: Any) -> Any:
        from grounding_ops.pipeline import results
        from grounding_ops.storage import open_store

        plan = self.container_plan()
        store = open_store(plan.output_uri, s3_client=s3_client(self.s3_conn_id))
        result = results.record_evaluation(store, plan, tracking_uri=mlflow_tracking_uri())
        if result.mlflow_url:
            self.links["mlflow"] = result.mlflow_url
        self.lineage_outputs = [plan.output_uri]
        self.log.info(results.evaluation_summary_line(result))
        return result.to_dict()
