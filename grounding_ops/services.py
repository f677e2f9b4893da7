"""The embedded local services: S3 (moto), MLflow, Airflow and a Docker daemon.

Two profiles: ``local`` (the default, ``make demo``): Airflow on SQLite with the LocalExecutor;
``celery`` (``grounding-ops services start --profile celery``): Airflow's metadata in Postgres
(Debian's ``postgresql``, a cluster initdb'ed into the state directory), Redis as the Celery
broker (Debian's ``redis-server``) and two Celery workers, one consuming only the GPU queue
(``GROUNDING_OPS_GPU_QUEUE``, default ``gpu``) and one the default queue — how a team deploys
it, on one machine.

Secrets (the admin password, JWT secret, Fernet key, database and broker URLs) are generated
into ``<state>/secrets/`` (0700), each file 0600 from its creation. Airflow reads the sensitive
ones through its ``*_CMD`` options, so no component's (and no task's) environment holds them.

``make services`` / ``grounding-ops services start`` and the test suite's session
fixtures use this same code. Every process is started in its own session with a
pidfile under the state directory, so ``stop`` ends exactly what ``start`` started and
nothing else. Everything binds 127.0.0.1; readiness is awaited with a timeout and a
message naming the log file when a service does not come up.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from grounding_ops.settings import PROFILES, REPO_ROOT, ServiceSettings
from grounding_ops.vocabulary import DEFAULT_TRAIN_PRESET, TRAIN_PRESET_ENV

SERVICE_NAMES = ("s3", "mlflow", "airflow", "docker")
AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
DOCKER_SOCKET = "/var/run/docker.sock"
POSTGRES_USER = "airflow"
POSTGRES_DB = "airflow"
# Celery workers of the celery profile: (name, queue). The GPU one serves only the GPU queue.
DEFAULT_QUEUE = "default"


class ServiceError(RuntimeError):
    """A service could not be started, reached or stopped; the message says where to look."""


@dataclass
class ManagedProcess:
    """A long-running process with a pidfile and a log file under the state directory."""

    name: str
    argv: list[str]
    env: dict[str, str]
    state_dir: Path
    cwd: Path | None = None
    marker: str = ""  # a string that must appear in /proc/<pid>/cmdline for us to signal it
    user: str | None = None  # run as this user (postgres refuses to run as root)
    stop_signal: int = signal.SIGTERM
    _popen: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def pidfile(self) -> Path:
        return self.state_dir / "pids" / f"{self.name}.pid"

    @property
    def logfile(self) -> Path:
        return self.state_dir / "logs" / f"{self.name}.log"

    def pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _is_our_process(pid, self.marker or Path(self.argv[0]).name) else None

    def start(self) -> int:
        running = self.pid()
        if running:
            return running
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        with open(self.logfile, "ab") as log:
            log.write(f"\n--- starting {self.name}: {' '.join(self.argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                user=self.user,
                group=self.user,
            )
        self._popen = proc
        self.pidfile.write_text(str(proc.pid))
        return proc.pid

    def running(self) -> bool:
        """Alive? Exact for a process started here; by pidfile and command line otherwise."""
        if self._popen is not None:
            return self._popen.poll() is None
        return self.pid() is not None

    def stop(self, timeout: float = 20.0) -> bool:
        pid = self._popen.pid if self._popen is not None and self._popen.poll() is None else self.pid()
        if pid is None:
            self.pidfile.unlink(missing_ok=True)
            return False
        _signal_group(pid, self.stop_signal)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _group_alive(pid):
            time.sleep(0.2)
        if _group_alive(pid):
            _signal_group(pid, signal.SIGKILL)
            time.sleep(0.5)
        _reap(pid)
        self.pidfile.unlink(missing_ok=True)
        return True


def _is_our_process(pid: int, marker: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    if "State:\tZ" in status:
        return False
    return marker in cmdline


def _group_alive(pgid: int) -> bool:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields: state ppid pgrp ...
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def wait_until(
    check: Callable[[], bool], *, timeout: float, what: str, logfile: Path | None, process: ManagedProcess | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if process is not None and not process.running():
            raise ServiceError(f"{what} exited during start-up; see {logfile}:\n{_tail(logfile)}")
        time.sleep(0.5)
    hint = f"; see {logfile}:\n{_tail(logfile)}" if logfile else ""
    raise ServiceError(f"{what} did not become ready within {timeout:.0f}s{hint}")


def _tail(path: Path | None, lines: int = 15) -> str:
    if path is None or not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (loopback only)
            return 200 <= response.status < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except (urllib.error.URLError, OSError):
        return False


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _bin(name: str, *, platform_first: bool = False) -> str:
    """An executable of this environment, else of the platform venv, else on PATH.

    ``platform_first`` prefers the platform venv (the trainer environment's
    ``mlflow`` is mlflow-skinny, which has no tracking server)."""
    folders = [Path(sys.executable).parent, REPO_ROOT / ".venv" / "bin"]
    for folder in reversed(folders) if platform_first else folders:
        candidate = folder / name
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if not found:
        raise ServiceError(f"{name} is not installed in this environment; run `make setup`")
    return found


def _base_env(settings: ServiceSettings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(settings.client_env())
    env["PYTHONUNBUFFERED"] = "1"
    return env


# --------------------------------------------------------------------------- S3


def s3_process(settings: ServiceSettings) -> ManagedProcess:
    return ManagedProcess(
        name="s3",
        argv=[_bin("moto_server"), "-H", settings.host, "-p", str(settings.s3_port)],
        env=_base_env(settings),
        state_dir=settings.state_dir,
        marker="moto_server",
    )


def _start_http_service(
    proc: ManagedProcess, *, host: str, port: int, port_variable: str, health_url: str, what: str, timeout: float
) -> None:
    """Start ``proc`` unless it runs already, refusing a port that a stranger holds, and await health."""
    if proc.pid() is None and port_in_use(host, port):
        raise ServiceError(f"port {port} is taken by another program; set {port_variable} to a free port")
    proc.start()
    wait_until(lambda: http_ok(health_url), timeout=timeout, what=what, logfile=proc.logfile, process=proc)


def start_s3(settings: ServiceSettings, timeout: float = 60.0) -> None:
    _start_http_service(
        s3_process(settings),
        host=settings.host,
        port=settings.s3_port,
        port_variable="GROUNDING_OPS_S3_PORT",
        health_url=f"{settings.s3_endpoint}/moto-api/",
        what="S3 endpoint (moto)",
        timeout=timeout,
    )
    ensure_bucket(settings)


def s3_client(settings: ServiceSettings):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint,
        aws_access_key_id=settings.s3_access_key,
        aws_secret_access_key=settings.s3_secret_key,
        region_name="us-east-1",
    )


def ensure_bucket(settings: ServiceSettings) -> None:
    client = s3_client(settings)
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if settings.bucket not in existing:
        client.create_bucket(Bucket=settings.bucket)


# ----------------------------------------------------------------------- MLflow


def mlflow_process(settings: ServiceSettings) -> ManagedProcess:
    db = settings.state_dir / "mlflow" / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    env = _base_env(settings)
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    # No MLflow server jobs: the platform uses none, and their huey consumers start in sessions of
    # their own (about 190 MB each), so stopping the server's process group would leave them running.
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    return ManagedProcess(
        name="mlflow",
        argv=[
            _bin("mlflow", platform_first=True),
            "server",
            "--backend-store-uri",
            f"sqlite:///{db}",
            "--artifacts-destination",
            f"s3://{settings.bucket}/mlflow",
            "--host",
            settings.host,
            "--port",
            str(settings.mlflow_port),
            "--workers",
            "1",
        ],
        env=env,
        state_dir=settings.state_dir,
        marker="mlflow",
    )


def start_mlflow(settings: ServiceSettings, timeout: float = 120.0) -> None:
    _start_http_service(
        mlflow_process(settings),
        host=settings.host,
        port=settings.mlflow_port,
        port_variable="GROUNDING_OPS_MLFLOW_PORT",
        health_url=f"{settings.mlflow_uri}/health",
        what="MLflow tracking server",
        timeout=timeout,
    )


# ---------------------------------------------------------------------- Airflow


def secrets_dir(settings: ServiceSettings) -> Path:
    """``<state>/secrets``: 0700, created so (and tightened if an older run made it wider)."""
    folder = settings.state_dir / "secrets"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    return folder


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` as a file that is 0600 from its creation (replacing it atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _secret(settings: ServiceSettings, name: str, make: Callable[[], str]) -> str:
    path = secrets_dir(settings) / name
    if not path.exists():
        write_private(path, make())
    return path.read_text().strip()


def _airflow_secret(settings: ServiceSettings, name: str, length: int = 32) -> str:
    return _secret(settings, name, lambda: secrets.token_urlsafe(length))


def airflow_password(settings: ServiceSettings) -> str:
    return _airflow_secret(settings, "airflow-admin-password", 12)


def airflow_login_line(settings: ServiceSettings) -> str:
    """The admin login: with the password the first time it is shown, afterwards where it is kept."""
    path = secrets_dir(settings) / "airflow-admin-password"
    shown = secrets_dir(settings) / ".login-shown"
    if not shown.exists():
        password = airflow_password(settings)
        shown.touch(mode=0o600)
        return f"{settings.airflow_admin} / {password}  (shown once; kept in {path})"
    return f"{settings.airflow_admin} / (password in {path})"


def _cmd_reading(path: Path) -> str:
    """An Airflow ``*_CMD`` value that prints the secret file ``path``."""
    return shlex.join(["cat", str(path)])


def airflow_env(settings: ServiceSettings) -> dict[str, str]:
    """The environment every Airflow component (and therefore every task) runs with.

    It names the secret files (``*_CMD``) instead of holding the JWT secret, the Fernet key or the
    database/broker URLs: tasks inherit this environment.
    """
    home = settings.airflow_home
    env = _base_env(settings)
    for inherited in SECRET_OPTIONS:
        env.pop(inherited, None)
        env.pop(f"{inherited}_CMD", None)
    folder = secrets_dir(settings)
    _fernet_key(settings)
    _airflow_secret(settings, "jwt-secret")
    passwords = home / "simple_auth_manager_passwords.json"
    lineage_log = settings.state_dir / "lineage" / "openlineage-events.jsonl"
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "GROUNDING_OPS_INPUT_ROOTS": settings.input_roots,
            TRAIN_PRESET_ENV: settings.train_preset,
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor" if settings.profile == "celery" else "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{settings.airflow_admin}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{settings.airflow_url}/execution/",
            "AIRFLOW__CORE__FERNET_KEY_CMD": _cmd_reading(folder / "fernet-key"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD": _cmd_reading(_database_url_file(settings)),
            "AIRFLOW__API__HOST": settings.host,
            "AIRFLOW__API__PORT": str(settings.airflow_port),
            "AIRFLOW__API__BASE_URL": settings.airflow_url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API_AUTH__JWT_SECRET_CMD": _cmd_reading(folder / "jwt-secret"),
            "AIRFLOW__API_AUTH__JWT_ISSUER": "grounding-ops",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(settings.log_dir / "airflow-tasks"),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(settings.airflow_port + 1),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(settings.airflow_port + 2),
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            # A task whose supervisor died (e.g. with a restarted scheduler) is failed, and retried, after this.
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "90",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "30",
            "AIRFLOW__OPENLINEAGE__TRANSPORT": os.environ.get(
                "AIRFLOW__OPENLINEAGE__TRANSPORT",
                json.dumps({"type": "file", "log_file_path": str(lineage_log), "append": True}),
            ),
            "AIRFLOW__OPENLINEAGE__NAMESPACE": os.environ.get("AIRFLOW__OPENLINEAGE__NAMESPACE", "grounding-ops"),
            "AIRFLOW_CONN_GROUNDING_S3": json.dumps(
                {
                    "conn_type": "aws",
                    "login": settings.s3_access_key,
                    "password": settings.s3_secret_key,
                    "extra": {"endpoint_url": settings.s3_endpoint, "region_name": "us-east-1"},
                }
            ),
            "AIRFLOW_CONN_GROUNDING_MLFLOW": json.dumps({"conn_type": "http", "host": settings.mlflow_uri}),
            "AIRFLOW_VAR_GROUNDING_BUCKET": settings.bucket,
            "GROUNDING_OPS_STATE_DIR": str(settings.state_dir),
        }
    )
    if settings.profile == "celery":
        env.update(
            {
                "AIRFLOW__CELERY__BROKER_URL_CMD": _cmd_reading(folder / "celery-broker-url"),
                "AIRFLOW__CELERY__RESULT_BACKEND_CMD": _cmd_reading(folder / "celery-result-backend"),
                "AIRFLOW__OPERATORS__DEFAULT_QUEUE": DEFAULT_QUEUE,
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
                "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
            }
        )
    lineage_log.parent.mkdir(parents=True, exist_ok=True)
    return env


SECRET_OPTIONS = (
    "AIRFLOW__CORE__FERNET_KEY",
    "AIRFLOW__API_AUTH__JWT_SECRET",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW__CELERY__BROKER_URL",
    "AIRFLOW__CELERY__RESULT_BACKEND",
)


def _database_url_file(settings: ServiceSettings) -> Path:
    """The secret file holding Airflow's database URL (SQLite, or the celery profile's Postgres)."""
    path = secrets_dir(settings) / "sql-alchemy-conn"
    if settings.profile == "celery":
        write_private(path, postgres_url(settings))
    else:
        write_private(path, f"sqlite:///{settings.airflow_home / 'airflow.db'}")
    return path


def _fernet_key(settings: ServiceSettings) -> str:
    import base64

    return _secret(settings, "fernet-key", lambda: base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())


def airflow_processes(settings: ServiceSettings, profile: str | None = None) -> list[ManagedProcess]:
    """The Airflow components of ``profile`` (default: the settings'), api-server first."""
    env = airflow_env(settings)
    airflow = _bin("airflow")
    extra = {
        "api-server": ["--host", settings.host, "--port", str(settings.airflow_port), "--workers", "1"],
        "scheduler": ["--skip-serve-logs"],
        "dag-processor": [],
        "triggerer": ["--skip-serve-logs"],
    }
    processes = [
        ManagedProcess(
            name=f"airflow-{component}",
            argv=[airflow, component, *extra[component]],
            env=env,
            state_dir=settings.state_dir,
            marker="airflow",
        )
        for component in AIRFLOW_COMPONENTS
    ]
    if (profile or settings.profile) == "celery":
        processes += celery_worker_processes(settings, env)
    return processes


def celery_workers(settings: ServiceSettings) -> list[tuple[str, str]]:
    """(name, queue) of the celery profile's workers: one for the GPU queue only, one for the default queue."""
    from grounding_ops.pipeline.docker_tasks import gpu_queue

    return [("celery-gpu", gpu_queue()), ("celery-default", DEFAULT_QUEUE)]


def worker_hostname() -> str:
    """Airflow's ``hostname_callable`` for the local Celery workers: which worker ran a task, by name.

    Both workers share this machine's host name, so each reports ``<worker>.<host>`` instead.
    """
    name = os.environ.get("GROUNDING_OPS_WORKER_NAME", "")
    return f"{name}.{socket.gethostname()}" if name else socket.getfqdn()


def celery_worker_processes(settings: ServiceSettings, env: dict[str, str]) -> list[ManagedProcess]:
    airflow = _bin("airflow")
    workers = []
    for name, queue in celery_workers(settings):
        pid = settings.state_dir / "celery" / f"{name}.pid"
        pid.parent.mkdir(parents=True, exist_ok=True)
        workers.append(
            ManagedProcess(
                name=f"airflow-{name}",
                argv=[
                    airflow,
                    "celery",
                    "worker",
                    "--queues",
                    queue,
                    "--concurrency",
                    "2",
                    "--celery-hostname",
                    f"{name}@%h",
                    "--pid",
                    str(pid),
                    "--skip-serve-logs",
                    "--without-gossip",
                    "--without-mingle",
                ],
                env={
                    **env,
                    "GROUNDING_OPS_WORKER_NAME": name,
                    "AIRFLOW__CORE__HOSTNAME_CALLABLE": "grounding_ops.services.worker_hostname",
                },
                state_dir=settings.state_dir,
                marker=f"{name}@",  # Celery retitles its processes: "[celeryd: celery-gpu@host:MainProcess] ..."
            )
        )
    return workers


# ----------------------------------------------------------- Postgres and Redis (celery profile)


def _postgres_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
    )
    if candidates:
        return str(candidates[-1])
    raise ServiceError(f"PostgreSQL's {name} is not installed: `apt-get install -y postgresql` (Debian)")


def _state_port(settings: ServiceSettings, name: str) -> int:
    """A free loopback port chosen once for ``name`` and kept in the state directory."""
    path = settings.state_dir / name / "port"
    if path.exists():
        return int(path.read_text().strip())
    path.parent.mkdir(parents=True, exist_ok=True)
    port = free_port(settings.host)
    path.write_text(str(port))
    return port


def postgres_port(settings: ServiceSettings) -> int:
    return _state_port(settings, "postgres")


def redis_port(settings: ServiceSettings) -> int:
    return _state_port(settings, "redis")


def postgres_url(settings: ServiceSettings, driver: str = "postgresql+psycopg2", database: str = POSTGRES_DB) -> str:
    password = _airflow_secret(settings, "postgres-password")
    return f"{driver}://{POSTGRES_USER}:{password}@{settings.host}:{postgres_port(settings)}/{database}"


def _postgres_user() -> str | None:
    """postgres refuses to run as root: as root it runs as the ``postgres`` user (Debian's package makes it)."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise ServiceError(
            "running as root, but there is no `postgres` user to run PostgreSQL as: "
            "`apt-get install -y postgresql` creates it"
        ) from None
    return "postgres"


def _give_to(path: Path, user: str | None) -> None:
    if user is None:
        return
    import pwd

    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def _check_reachable_by(path: Path, user: str | None) -> None:
    if user is None:
        return
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            raise ServiceError(
                f"PostgreSQL runs as user {user} and cannot enter {parent} (mode {oct(mode & 0o777)}): put "
                f"GROUNDING_OPS_STATE_DIR under a folder others may traverse, or `chmod o+x {parent}`"
            )


def postgres_process(settings: ServiceSettings) -> ManagedProcess:
    data = settings.state_dir / "postgres" / "data"
    return ManagedProcess(
        name="postgres",
        argv=[
            _postgres_bin("postgres"),
            "-D",
            str(data),
            "-h",
            settings.host,
            "-p",
            str(postgres_port(settings)),
            "-c",
            f"unix_socket_directories={data}",
            "-c",
            "max_connections=200",
        ],
        env={k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "AWS_"))},
        state_dir=settings.state_dir,
        marker=str(data),
        user=_postgres_user(),
        stop_signal=signal.SIGINT,  # "fast" shutdown; SIGTERM would wait for every client to leave
    )


def _initdb(settings: ServiceSettings, user: str | None) -> None:
    folder = settings.state_dir / "postgres"
    data = folder / "data"
    if (data / "PG_VERSION").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    _give_to(folder, user)
    _check_reachable_by(folder, user)
    pwfile = folder / "initdb-password"
    write_private(pwfile, _airflow_secret(settings, "postgres-password") + "\n")
    _give_to(pwfile, user)
    log = settings.log_dir / "postgres-initdb.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(log, "ab") as handle:
            result = subprocess.run(
                [
                    _postgres_bin("initdb"),
                    "-D",
                    str(data),
                    "-U",
                    POSTGRES_USER,
                    "--pwfile",
                    str(pwfile),
                    "--auth-host=scram-sha-256",
                    "--auth-local=peer",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                ],
                stdout=handle,
                stderr=subprocess.STDOUT,
                timeout=300,
                user=user,
                group=user,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"},
            )
    finally:
        pwfile.unlink(missing_ok=True)
    if result.returncode != 0:
        raise ServiceError(f"initdb failed; see {log}:\n{_tail(log)}")


def _postgres_ready(settings: ServiceSettings) -> bool:
    import psycopg2

    try:
        psycopg2.connect(postgres_url(settings, "postgresql", "postgres"), connect_timeout=2).close()
    except psycopg2.OperationalError:
        return False
    return True


def start_postgres(settings: ServiceSettings, timeout: float = 120.0) -> None:
    """Postgres for Airflow's metadata: a cluster in ``<state>/postgres``, listening on 127.0.0.1 only."""
    import psycopg2

    user = _postgres_user()
    _initdb(settings, user)
    proc = postgres_process(settings)
    if proc.pid() is None and port_in_use(settings.host, postgres_port(settings)):
        (settings.state_dir / "postgres" / "port").unlink()  # a stranger took it since: pick another
        proc = postgres_process(settings)
    proc.start()
    wait_until(
        lambda: _postgres_ready(settings), timeout=timeout, what="PostgreSQL", logfile=proc.logfile, process=proc
    )
    admin = psycopg2.connect(postgres_url(settings, "postgresql", "postgres"))
    try:
        admin.autocommit = True
        with admin.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (POSTGRES_DB,))
            if cursor.fetchone() is None:
                cursor.execute(f"CREATE DATABASE {POSTGRES_DB}")
    finally:
        admin.close()


def redis_process(settings: ServiceSettings) -> ManagedProcess:
    config = settings.state_dir / "redis" / "redis.conf"
    redis = shutil.which("redis-server") or "/usr/bin/redis-server"
    return ManagedProcess(
        name="redis",
        argv=[redis, str(config)],
        env=dict(os.environ),
        state_dir=settings.state_dir,
        marker="redis-server",
    )


def start_redis(settings: ServiceSettings, timeout: float = 60.0) -> None:
    """Redis as the Celery broker, on 127.0.0.1 with a generated password."""
    if not (shutil.which("redis-server") or Path("/usr/bin/redis-server").exists()):
        raise ServiceError("redis-server is not installed: `apt-get install -y redis-server` (Debian)")
    proc = redis_process(settings)
    if proc.pid() is None and port_in_use(settings.host, redis_port(settings)):
        (settings.state_dir / "redis" / "port").unlink()  # a stranger took it since: pick another
    password = _airflow_secret(settings, "redis-password")
    folder = settings.state_dir / "redis"
    # The password lives in this 0600 file, not on the command line (visible in /proc to everyone).
    write_private(
        folder / "redis.conf",
        "\n".join(
            [
                f"bind {settings.host}",
                f"port {redis_port(settings)}",
                "protected-mode yes",
                f"dir {folder}",
                'save ""',
                "appendonly no",
                "daemonize no",
                f"requirepass {password}",
            ]
        )
        + "\n",
    )
    proc.start()
    folder = secrets_dir(settings)
    write_private(folder / "celery-broker-url", f"redis://:{password}@{settings.host}:{redis_port(settings)}/0")
    write_private(folder / "celery-result-backend", "db+" + postgres_url(settings))

    def ping() -> bool:
        import redis as redis_client

        try:
            return bool(
                redis_client.Redis(
                    host=settings.host, port=redis_port(settings), password=password, socket_timeout=2
                ).ping()
            )
        except redis_client.RedisError:
            return False

    wait_until(ping, timeout=timeout, what="Redis", logfile=proc.logfile, process=proc)


def prepare_airflow(settings: ServiceSettings) -> None:
    """Create AIRFLOW_HOME, the admin password and the metadata database (idempotent)."""
    home = settings.airflow_home
    home.mkdir(parents=True, exist_ok=True)
    passwords = home / "simple_auth_manager_passwords.json"
    write_private(passwords, json.dumps({settings.airflow_admin: airflow_password(settings)}))
    log = settings.log_dir / "airflow-db-migrate.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as handle:
        result = subprocess.run(
            [_bin("airflow"), "db", "migrate"],
            env=airflow_env(settings),
            stdout=handle,
            stderr=subprocess.STDOUT,
            timeout=600,
        )
    if result.returncode != 0:
        raise ServiceError(f"`airflow db migrate` failed; see {log}:\n{_tail(log)}")
    from grounding_ops.pipeline.pools import gpu_pool, gpu_pool_slots

    with open(log, "ab") as handle:  # the trainer containers' pool (tasks in a missing pool never run)
        result = subprocess.run(
            [
                _bin("airflow"),
                "pools",
                "set",
                gpu_pool(),
                str(gpu_pool_slots()),
                "GPU trainer containers (see docs/operations.md)",
            ],
            env=airflow_env(settings),
            stdout=handle,
            stderr=subprocess.STDOUT,
            timeout=300,
        )
    if result.returncode != 0:
        raise ServiceError(f"`airflow pools set {gpu_pool()}` failed; see {log}:\n{_tail(log)}")


def start_airflow(settings: ServiceSettings, timeout: float = 180.0) -> None:
    processes = airflow_processes(settings)
    if processes[0].pid() is None and port_in_use(settings.host, settings.airflow_port):
        raise ServiceError(f"port {settings.airflow_port} is taken by another program; set GROUNDING_OPS_AIRFLOW_PORT")
    if settings.profile == "celery":
        start_postgres(settings)
        start_redis(settings)
    prepare_airflow(settings)
    for proc in processes:
        proc.start()
    api = processes[0]
    wait_until(
        lambda: http_ok(f"{settings.airflow_url}/api/v2/monitor/health"),
        timeout=timeout,
        what="Airflow api-server",
        logfile=api.logfile,
        process=api,
    )


def airflow_token(settings: ServiceSettings) -> str:
    """A JWT for Airflow's REST API, from the admin login."""
    body = json.dumps({"username": settings.airflow_admin, "password": airflow_password(settings)}).encode()
    request = urllib.request.Request(
        f"{settings.airflow_url}/auth/token", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (loopback only)
        return json.load(response)["access_token"]


# ----------------------------------------------------------------------- Docker


def docker_reachable(timeout: float = 5.0) -> bool:
    if not shutil.which("docker"):
        return False
    try:
        result = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, timeout=timeout, text=True
        )
    except (subprocess.TimeoutExpired, OSError):
        return False
    return result.returncode == 0


def docker_process(settings: ServiceSettings) -> ManagedProcess:
    dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
    return ManagedProcess(
        name="dockerd",
        argv=[dockerd, "--bridge=none", "--iptables=false", "--ip-masq=false", "--host", f"unix://{DOCKER_SOCKET}"],
        env=dict(os.environ),
        state_dir=settings.state_dir,
        marker="dockerd",
    )


def start_docker(settings: ServiceSettings, timeout: float = 60.0) -> None:
    """Use a reachable Docker daemon; else, as root on Debian, install and start one."""
    if docker_reachable():
        return
    if os.geteuid() != 0:
        raise ServiceError("no Docker daemon is reachable; start one (or run as root to let us start dockerd)")
    if not shutil.which("dockerd"):
        if not Path("/etc/debian_version").exists():
            raise ServiceError("no Docker daemon is reachable and dockerd is not installed; install Docker")
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "docker.io"],
            check=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    proc = docker_process(settings)
    proc.start()
    wait_until(docker_reachable, timeout=timeout, what="Docker daemon", logfile=proc.logfile, process=proc)


# ------------------------------------------------------------------- start/stop


def start(settings: ServiceSettings, names: Iterable[str] = SERVICE_NAMES) -> None:
    wanted = list(names)
    # The local S3 endpoint keeps objects in memory: when it starts empty, the MLflow registry's
    # model versions and artifacts would point at objects that no longer exist, so it starts empty too.
    if "s3" in wanted and s3_process(settings).pid() is None and mlflow_process(settings).pid() is None:
        reset_mlflow_store(settings)
    starters = {"docker": start_docker, "s3": start_s3, "mlflow": start_mlflow, "airflow": start_airflow}
    for name in ("docker", "s3", "mlflow", "airflow"):
        if name in wanted:
            print(f"starting {name} ...", flush=True)
            starters[name](settings)


def reset_mlflow_store(settings: ServiceSettings) -> None:
    db = settings.state_dir / "mlflow" / "mlflow.db"
    if db.exists():
        print(f"the local S3 starts empty: starting MLflow with an empty store too ({db} removed)", flush=True)
        db.unlink()


def stop(settings: ServiceSettings) -> list[str]:
    stopped = []
    backends = [
        make(settings)
        for name, make in (("redis", redis_process), ("postgres", postgres_process))
        if (settings.state_dir / name).exists()
    ]  # the celery profile's, if it ever ran here
    processes = [
        *reversed(airflow_processes(settings, "celery")),
        *backends,
        mlflow_process(settings),
        s3_process(settings),
        docker_process(settings),
    ]
    for proc in processes:
        if proc.stop():
            stopped.append(proc.name)
    return stopped


def status(settings: ServiceSettings) -> dict[str, bool]:
    states = {
        "s3": http_ok(f"{settings.s3_endpoint}/moto-api/"),
        "mlflow": http_ok(f"{settings.mlflow_uri}/health"),
        "airflow": http_ok(f"{settings.airflow_url}/api/v2/monitor/health"),
        "docker": docker_reachable(),
    }
    if settings.profile == "celery":
        states["postgres"] = postgres_process(settings).running()
        states["redis"] = redis_process(settings).running()
        for proc in celery_worker_processes(settings, {}):
            states[proc.name.removeprefix("airflow-")] = proc.running()
    return states


def _print_summary(settings: ServiceSettings) -> None:
    print(f"S3 endpoint      {settings.s3_endpoint}  (bucket {settings.bucket})")
    print(f"MLflow           {settings.mlflow_uri}")
    print(f"Airflow UI       {settings.airflow_url}")
    print(f"Airflow login    {airflow_login_line(settings)}")
    if settings.profile == "celery":
        workers = ", ".join(f"{name} (queue {queue})" for name, queue in celery_workers(settings))
        print(
            f"Celery profile   Postgres 127.0.0.1:{postgres_port(settings)}, Redis 127.0.0.1:{redis_port(settings)}, "
            f"workers {workers}"
        )
    print(f"Logs             {settings.log_dir}")


def _cmd_services(args: argparse.Namespace) -> int:
    import dataclasses

    settings = ServiceSettings.from_env()
    if args.profile:
        settings = dataclasses.replace(settings, profile=args.profile)
    if args.action == "start":
        try:
            start(settings, args.only or SERVICE_NAMES)
        except ServiceError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        _print_summary(settings)
    elif args.action == "stop":
        stopped = stop(settings)
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    elif args.action == "status":
        states = status(settings)
        for name, up in states.items():
            print(f"{name:8} {'up' if up else 'down'}")
        return 0 if all(states.values()) else 1
    elif args.action == "env":
        for key, value in settings.client_env().items():
            print(f"export {key}={value}")
    return 0


def _cmd_images(args: argparse.Namespace) -> int:
    from grounding_ops import images

    settings = ServiceSettings.from_env()
    start_docker(settings)
    builders = {"base": images.build_base_image, "trainer-cpu": images.build_trainer_cpu_image}
    for name in args.names:
        tag = builders[name]()
        print(tag)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("services", help="start/stop the embedded local services (127.0.0.1)")
    parser.add_argument("action", choices=("start", "stop", "status", "env"))
    parser.add_argument("--only", nargs="+", choices=SERVICE_NAMES, help="start only these services")
    parser.add_argument(
        "--profile",
        choices=PROFILES,
        help="local: SQLite + LocalExecutor (default, GROUNDING_OPS_PROFILE); celery: Postgres, "
        "Redis and two Celery workers (one for the GPU queue only)",
    )
    parser.set_defaults(func=_cmd_services)

    images_parser = subparsers.add_parser("images", help="build the project's Docker images offline")
    images_parser.add_argument("action", choices=("build",))
    images_parser.add_argument("names", nargs="+", choices=("base", "trainer-cpu"))
    images_parser.set_defaults(func=_cmd_images)


def isolated_settings(
    state_dir: Path, bucket: str = "grounding-ops", profile: str = "local", train_preset: str = DEFAULT_TRAIN_PRESET
) -> ServiceSettings:
    """Settings on free ports with their own state directory (for tests: the form trains the cheap
    ``tiny-cpu`` preset unless told otherwise)."""
    return ServiceSettings(
        state_dir=state_dir,
        s3_port=free_port(),
        mlflow_port=free_port(),
        airflow_port=_free_port_pair(),
        bucket=bucket,
        profile=profile,
        train_preset=train_preset,
    )


def _free_port_pair() -> int:
    """A port p with p+1 and p+2 also free (Airflow's log server ports follow the API port)."""
    for _ in range(50):
        port = free_port()
        if port < 65000 and not any(port_in_use("127.0.0.1", port + i) for i in (1, 2)):
            return port
    raise ServiceError("could not find three consecutive free ports for Airflow")
