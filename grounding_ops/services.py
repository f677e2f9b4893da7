"""The embedded local services: S3 (moto), MLflow, Airflow and a Docker daemon.

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

from grounding_ops.settings import REPO_ROOT, ServiceSettings

SERVICE_NAMES = ("s3", "mlflow", "airflow", "docker")
AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
DOCKER_SOCKET = "/var/run/docker.sock"


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
        _signal_group(pid, signal.SIGTERM)
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


def wait_until(check: Callable[[], bool], *, timeout: float, what: str, logfile: Path | None,
               process: ManagedProcess | None = None) -> None:
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


def _bin(name: str) -> str:
    """An executable of this environment, else of the platform venv, else on PATH."""
    for folder in (Path(sys.executable).parent, REPO_ROOT / ".venv" / "bin"):
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


def _start_http_service(proc: ManagedProcess, *, host: str, port: int, port_variable: str, health_url: str,
                        what: str, timeout: float) -> None:
    """Start ``proc`` unless it runs already, refusing a port that a stranger holds, and await health."""
    if proc.pid() is None and port_in_use(host, port):
        raise ServiceError(f"port {port} is taken by another program; set {port_variable} to a free port")
    proc.start()
    wait_until(lambda: http_ok(health_url), timeout=timeout, what=what, logfile=proc.logfile, process=proc)


def start_s3(settings: ServiceSettings, timeout: float = 60.0) -> None:
    _start_http_service(s3_process(settings), host=settings.host, port=settings.s3_port,
                        port_variable="GROUNDING_OPS_S3_PORT", health_url=f"{settings.s3_endpoint}/moto-api/",
                        what="S3 endpoint (moto)", timeout=timeout)
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
    return ManagedProcess(
        name="mlflow",
        argv=[
            _bin("mlflow"), "server",
            "--backend-store-uri", f"sqlite:///{db}",
            "--artifacts-destination", f"s3://{settings.bucket}/mlflow",
            "--host", settings.host,
            "--port", str(settings.mlflow_port),
            "--workers", "1",
        ],
        env=env,
        state_dir=settings.state_dir,
        marker="mlflow",
    )


def start_mlflow(settings: ServiceSettings, timeout: float = 120.0) -> None:
    _start_http_service(mlflow_process(settings), host=settings.host, port=settings.mlflow_port,
                        port_variable="GROUNDING_OPS_MLFLOW_PORT", health_url=f"{settings.mlflow_uri}/health",
                        what="MLflow tracking server", timeout=timeout)


# ---------------------------------------------------------------------- Airflow


def _airflow_secret(settings: ServiceSettings, name: str, length: int = 32) -> str:
    path = settings.state_dir / "secrets" / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(length))
        path.chmod(0o600)
    return path.read_text().strip()


def airflow_password(settings: ServiceSettings) -> str:
    return _airflow_secret(settings, "airflow-admin-password", 12)


def airflow_env(settings: ServiceSettings) -> dict[str, str]:
    """The environment every Airflow component (and therefore every task) runs with."""
    home = settings.airflow_home
    env = _base_env(settings)
    passwords = home / "simple_auth_manager_passwords.json"
    lineage_log = settings.state_dir / "lineage" / "openlineage-events.jsonl"
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{settings.airflow_admin}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{settings.airflow_url}/execution/",
        "AIRFLOW__CORE__FERNET_KEY": _fernet_key(settings),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__API__HOST": settings.host,
        "AIRFLOW__API__PORT": str(settings.airflow_port),
        "AIRFLOW__API__BASE_URL": settings.airflow_url,
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API_AUTH__JWT_SECRET": _airflow_secret(settings, "jwt-secret"),
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
        "AIRFLOW_CONN_GROUNDING_S3": json.dumps({
            "conn_type": "aws",
            "login": settings.s3_access_key,
            "password": settings.s3_secret_key,
            "extra": {"endpoint_url": settings.s3_endpoint, "region_name": "us-east-1"},
        }),
        "AIRFLOW_CONN_GROUNDING_MLFLOW": json.dumps({"conn_type": "http", "host": settings.mlflow_uri}),
        "AIRFLOW_VAR_GROUNDING_BUCKET": settings.bucket,
        "GROUNDING_OPS_STATE_DIR": str(settings.state_dir),
    })
    lineage_log.parent.mkdir(parents=True, exist_ok=True)
    return env


def _fernet_key(settings: ServiceSettings) -> str:
    path = settings.state_dir / "secrets" / "fernet-key"
    if not path.exists():
        import base64

        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())
        path.chmod(0o600)
    return path.read_text().strip()


def airflow_processes(settings: ServiceSettings) -> list[ManagedProcess]:
    env = airflow_env(settings)
    airflow = _bin("airflow")
    extra = {
        "api-server": ["--host", settings.host, "--port", str(settings.airflow_port), "--workers", "1"],
        "scheduler": ["--skip-serve-logs"],
        "dag-processor": [],
        "triggerer": ["--skip-serve-logs"],
    }
    return [
        ManagedProcess(
            name=f"airflow-{component}",
            argv=[airflow, component, *extra[component]],
            env=env,
            state_dir=settings.state_dir,
            marker="airflow",
        )
        for component in AIRFLOW_COMPONENTS
    ]


def prepare_airflow(settings: ServiceSettings) -> None:
    """Create AIRFLOW_HOME, the admin password and the metadata database (idempotent)."""
    home = settings.airflow_home
    home.mkdir(parents=True, exist_ok=True)
    passwords = home / "simple_auth_manager_passwords.json"
    passwords.write_text(json.dumps({settings.airflow_admin: airflow_password(settings)}))
    passwords.chmod(0o600)
    log = settings.log_dir / "airflow-db-migrate.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as handle:
        result = subprocess.run([_bin("airflow"), "db", "migrate"], env=airflow_env(settings),
                                stdout=handle, stderr=subprocess.STDOUT, timeout=600)
    if result.returncode != 0:
        raise ServiceError(f"`airflow db migrate` failed; see {log}:\n{_tail(log)}")
    from grounding_ops.pipeline.pools import GPU_POOL_SLOTS_ENV, gpu_pool

    slots = os.environ.get(GPU_POOL_SLOTS_ENV) or "2"
    with open(log, "ab") as handle:  # the trainer containers' pool (see docs/operations.md)
        result = subprocess.run([_bin("airflow"), "pools", "set", gpu_pool(), slots, "GPU trainer containers"],
                                env=airflow_env(settings), stdout=handle, stderr=subprocess.STDOUT, timeout=300)
    if result.returncode != 0:
        raise ServiceError(f"`airflow pools set {gpu_pool()}` failed; see {log}:\n{_tail(log)}")


def start_airflow(settings: ServiceSettings, timeout: float = 180.0) -> None:
    processes = airflow_processes(settings)
    if processes[0].pid() is None and port_in_use(settings.host, settings.airflow_port):
        raise ServiceError(
            f"port {settings.airflow_port} is taken by another program; set GROUNDING_OPS_AIRFLOW_PORT"
        )
    prepare_airflow(settings)
    for proc in processes:
        proc.start()
    api = processes[0]
    wait_until(lambda: http_ok(f"{settings.airflow_url}/api/v2/monitor/health"), timeout=timeout,
               what="Airflow api-server", logfile=api.logfile, process=api)


def airflow_token(settings: ServiceSettings) -> str:
    """A JWT for Airflow's REST API, from the admin login."""
    body = json.dumps({"username": settings.airflow_admin, "password": airflow_password(settings)}).encode()
    request = urllib.request.Request(f"{settings.airflow_url}/auth/token", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (loopback only)
        return json.load(response)["access_token"]


# ----------------------------------------------------------------------- Docker


def docker_reachable(timeout: float = 5.0) -> bool:
    if not shutil.which("docker"):
        return False
    try:
        result = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                                capture_output=True, timeout=timeout, text=True)
    except (subprocess.TimeoutExpired, OSError):
        return False
    return result.returncode == 0


def docker_process(settings: ServiceSettings) -> ManagedProcess:
    dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
    return ManagedProcess(
        name="dockerd",
        argv=[dockerd, "--bridge=none", "--iptables=false", "--ip-masq=false",
              "--host", f"unix://{DOCKER_SOCKET}"],
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
        subprocess.run(["apt-get", "install", "-y", "-q", "docker.io"], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
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
    processes = [*reversed(airflow_processes(settings)), mlflow_process(settings), s3_process(settings),
                 docker_process(settings)]
    for proc in processes:
        if proc.stop():
            stopped.append(proc.name)
    return stopped


def status(settings: ServiceSettings) -> dict[str, bool]:
    return {
        "s3": http_ok(f"{settings.s3_endpoint}/moto-api/"),
        "mlflow": http_ok(f"{settings.mlflow_uri}/health"),
        "airflow": http_ok(f"{settings.airflow_url}/api/v2/monitor/health"),
        "docker": docker_reachable(),
    }


def _print_summary(settings: ServiceSettings) -> None:
    password_note = settings.state_dir / "secrets" / "airflow-admin-password"
    print(f"S3 endpoint      {settings.s3_endpoint}  (bucket {settings.bucket})")
    print(f"MLflow           {settings.mlflow_uri}")
    print(f"Airflow UI       {settings.airflow_url}")
    shown = settings.state_dir / "secrets" / ".login-shown"
    if not shown.exists():
        print(f"Airflow login    {settings.airflow_admin} / {airflow_password(settings)}  (shown once; kept in {password_note})")
        shown.touch()
    else:
        print(f"Airflow login    {settings.airflow_admin} / (see {password_note})")
    print(f"Logs             {settings.log_dir}")


def _cmd_services(args: argparse.Namespace) -> int:
    settings = ServiceSettings.from_env()
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
    parser.set_defaults(func=_cmd_services)

    images_parser = subparsers.add_parser("images", help="build the project's Docker images offline")
    images_parser.add_argument("action", choices=("build",))
    images_parser.add_argument("names", nargs="+", choices=("base", "trainer-cpu"))
    images_parser.set_defaults(func=_cmd_images)


def isolated_settings(state_dir: Path, bucket: str = "grounding-ops") -> ServiceSettings:
    """Settings on free ports with their own state directory (for tests)."""
    return ServiceSettings(
        state_dir=state_dir,
        s3_port=free_port(),
        mlflow_port=free_port(),
        airflow_port=_free_port_pair(),
        bucket=bucket,
    )


def _free_port_pair() -> int:
    """A port p with p+1 and p+2 also free (Airflow's log server ports follow the API port)."""
    for _ in range(50):
        port = free_port()
        if port < 65000 and not any(port_in_use("127.0.0.1", port + i) for i in (1, 2)):
            return port
    raise ServiceError("could not find three consecutive free ports for Airflow")
