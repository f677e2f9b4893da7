"""Multi-node training on an existing Ray cluster through the Ray Jobs API.

The job runs the same entrypoint as the container, ``grounding-ops train ...``, on the cluster's
head node; VeRL's ``ray.init()`` inside it attaches to that cluster (Ray sets ``RAY_ADDRESS`` for
job drivers), so the trainer spreads over every node. No home-made launcher, no SSH.

Credentials never travel with the job: Ray returns a job's ``runtime_env`` to any Jobs API or
dashboard client (over plain http by default), so ``submit_training`` refuses credential-like
variable names and ``shareable_env`` drops them. The nodes provide their own: the environment
``ray start`` runs with (job drivers and workers inherit it), an instance role, or
``~/.aws/credentials`` / ``~/.netrc`` on each node (boto3's and W&B's standard chains).

- ``resolve_address(address=None, conn_id="grounding_ray") -> str``: the dashboard URL, given
  or from an Airflow connection (host, port; default port 8265; schema http/https).
- ``train_argv(preset=..., dataset_uri=..., output_uri=..., sets=(), engine="verl") -> list[str]``.
- ``shareable_env(env) -> (env without credentials, names withheld)``.
- ``submit_training(address, argv, env_vars=..., submission_id=None) -> job id``: the entrypoint
  is ``shlex.join(argv)``, so values from a form can never inject shell syntax.
- ``job_status``, ``job_logs``, ``job_runtime_env``, ``stop_job(address, job_id) -> bool``.
- ``wait_for_job(address, job_id, poll_s=5, timeout_s=None, on_log=print) -> status``: polls the
  status and streams new log text; on timeout it stops the job and raises ``TimeoutError``.
- ``run_training_job(...) -> str``: submit + wait, stopping the job if the waiter is interrupted
  (blocking, for scripts; Airflow's ``train`` task defers to
  ``grounding_ops.pipeline.ray_trigger.RayJobTrigger`` instead and holds no worker meanwhile).

``ray`` is imported inside the functions: Airflow's DAG parsing never pays for it.
"""

from __future__ import annotations

import shlex
import time
from typing import Any, Callable, Mapping, Sequence

DEFAULT_CONN_ID = "grounding_ray"
DEFAULT_DASHBOARD_PORT = 8265
TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
# Variable names that carry credentials; they must never be part of a job's runtime_env.
CREDENTIAL_HINTS = ("SECRET", "PASSWORD", "TOKEN", "API_KEY", "ACCESS_KEY", "SESSION", "CREDENTIAL")


class RayJobError(RuntimeError):
    """The Ray job could not be submitted or did not succeed."""


def ray_address_from_connection(conn_id: str = DEFAULT_CONN_ID) -> str:
    """Dashboard URL from an Airflow connection: ``host`` (may include a scheme), ``port``, ``schema``."""
    try:
        from airflow.sdk import BaseHook
    except ImportError:  # Airflow 2
        from airflow.hooks.base import BaseHook

    conn = BaseHook.get_connection(conn_id)
    if not conn.host:
        raise RayJobError(
            f"Airflow connection {conn_id!r} has no host: set host (and port, default "
            f"{DEFAULT_DASHBOARD_PORT}) to the Ray dashboard of the cluster"
        )
    return _url(conn.host, conn.port, conn.schema)


def _url(host: str, port: int | None, scheme: str | None = None) -> str:
    if "://" in host:
        scheme, _, host = host.partition("://")
    host = host.rstrip("/")
    scheme = scheme if scheme in ("http", "https") else "http"
    if ":" in host.rsplit("]", 1)[-1]:  # host already carries a port
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port or DEFAULT_DASHBOARD_PORT}"


def resolve_address(address: str | None = None, conn_id: str = DEFAULT_CONN_ID) -> str:
    """The Ray dashboard address: the given one (``host:port`` or URL), else the Airflow connection's."""
    if address:
        return address if "://" in address else _url(address, None)
    return ray_address_from_connection(conn_id)


def train_argv(
    *,
    preset: str,
    dataset_uri: str,
    output_uri: str,
    sets: Sequence[str] = (),
    engine: str = "verl",
    extra_args: Sequence[str] = (),
) -> list[str]:
    """``grounding-ops train`` argv, one element per argument (quote with ``shlex.join`` only)."""
    argv = ["grounding-ops", "train", "--preset", preset, "--dataset", dataset_uri, "--output", output_uri]
    argv += ["--engine", engine]
    for item in sets:
        argv += ["--set", item]
    argv += list(extra_args)
    return argv


def _client(address: str) -> Any:
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as exc:  # ConnectionError and friends; the message says what failed
        raise RayJobError(
            f"cannot reach the Ray dashboard at {address}: {exc}. Check the cluster is up and the "
            f"address (Airflow connection {DEFAULT_CONN_ID!r} host/port) points at its dashboard"
        ) from exc


def is_credential_name(name: str) -> bool:
    upper = name.upper()
    return any(hint in upper for hint in CREDENTIAL_HINTS)


def shareable_env(env: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """``env`` without credential-like variables (safe in a runtime_env), and the names withheld."""
    kept = {str(k): str(v) for k, v in env.items() if not is_credential_name(str(k))}
    return kept, sorted(str(k) for k in env if is_credential_name(str(k)))


def submit_training(
    address: str,
    argv: Sequence[str],
    *,
    env_vars: Mapping[str, str] | None = None,
    submission_id: str | None = None,
    metadata: Mapping[str, str] | None = None,
    entrypoint_num_cpus: float | None = None,
) -> str:
    """Submit ``argv`` as a Ray job; returns the submission id.

    ``env_vars`` must hold no credentials (see the module docstring): they would be readable by
    every client of the cluster's Jobs API.
    """
    if not argv:
        raise ValueError("argv is empty: pass the grounding-ops train argument list")
    leaked = sorted(k for k in (env_vars or {}) if is_credential_name(str(k)))
    if leaked:
        raise RayJobError(
            f"{', '.join(leaked)} look like credentials: Ray returns a job's runtime_env to any Jobs API "
            "client, so provide them on the nodes instead (the environment of `ray start`, an instance "
            "role, ~/.aws/credentials) and leave them out of env_vars"
        )
    runtime_env: dict[str, Any] = {}
    if env_vars:
        runtime_env["env_vars"] = {str(k): str(v) for k, v in env_vars.items()}
    client = _client(address)
    return client.submit_job(
        entrypoint=shlex.join(argv),
        submission_id=submission_id,
        runtime_env=runtime_env or None,
        metadata=dict(metadata) if metadata else None,
        entrypoint_num_cpus=entrypoint_num_cpus,
    )


def job_status(address: str, job_id: str) -> str:
    return str(_client(address).get_job_status(job_id).value)


def job_logs(address: str, job_id: str) -> str:
    return _client(address).get_job_logs(job_id)


def job_runtime_env(address: str, job_id: str) -> dict[str, Any]:
    """The runtime_env the Jobs API returns for the job (what any client of the cluster can read)."""
    return dict(_client(address).get_job_info(job_id).runtime_env or {})


def log_tail(text: str, lines: int = 200) -> str:
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def stop_job(address: str, job_id: str) -> bool:
    """Ask Ray to stop the job (SIGTERM, then SIGKILL after Ray's grace period). True if it was running."""
    return bool(_client(address).stop_job(job_id))


def wait_for_job(
    address: str,
    job_id: str,
    *,
    poll_s: float = 5.0,
    timeout_s: float | None = None,
    on_log: Callable[[str], None] | None = print,
) -> str:
    """Poll until the job ends, passing each new chunk of its log to ``on_log``; returns the status."""
    client = _client(address)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    seen = 0
    while True:
        status = str(client.get_job_status(job_id).value)
        if on_log is not None:
            logs = client.get_job_logs(job_id)
            if len(logs) > seen:
                on_log(logs[seen:].rstrip("\n"))
                seen = len(logs)
        if status in TERMINAL_STATUSES:
            return status
        if deadline is not None and time.monotonic() > deadline:
            client.stop_job(job_id)
            raise TimeoutError(f"Ray job {job_id} still {status} after {timeout_s:g} s; it was stopped")
        time.sleep(poll_s)


def run_training_job(
    address: str,
    argv: Sequence[str],
    *,
    env_vars: Mapping[str, str] | None = None,
    submission_id: str | None = None,
    poll_s: float = 5.0,
    timeout_s: float | None = None,
    on_log: Callable[[str], None] | None = print,
) -> str:
    """Submit, stream logs until the end, and return the job id; RayJobError unless it SUCCEEDED.

    If the wait is interrupted (task killed, KeyboardInterrupt, timeout) the job is stopped.
    """
    job_id = submit_training(address, argv, env_vars=env_vars, submission_id=submission_id)
    if on_log is not None:
        keys = ", ".join(sorted(env_vars)) if env_vars else "none"
        on_log(f"submitted Ray job {job_id} to {address}: {shlex.join(argv)} (env vars: {keys})")
    try:
        status = wait_for_job(address, job_id, poll_s=poll_s, timeout_s=timeout_s, on_log=on_log)
    except BaseException:
        try:
            stop_job(address, job_id)
        except Exception:
            pass
        raise
    if status != "SUCCEEDED":
        raise RayJobError(f"Ray job {job_id} ended {status}; see its log above or `ray job logs {job_id}`")
    return job_id
