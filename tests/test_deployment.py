"""Deployment wiring: executor queues of the GPU tasks and the Docker daemon a container runs on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
GPU_TASKS = {"train", "evaluate", "evaluate_test"}


def _queues(env_queue: str | None) -> dict[str, str]:
    """Task id -> queue of grounding_train, parsed by a fresh DagBag with GROUNDING_OPS_GPU_QUEUE set."""
    env = dict(os.environ)
    env.pop("GROUNDING_OPS_GPU_QUEUE", None)
    if env_queue is not None:
        env["GROUNDING_OPS_GPU_QUEUE"] = env_queue
    code = (
        "import json, sys\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(REPO / 'dags' / 'grounding_train.py')!r})\n"
        "assert not bag.import_errors, bag.import_errors\n"
        "dag = bag.dags['grounding_train']\n"
        "print(json.dumps({t.task_id: [t.queue, t.doc_md or ''] for t in dag.tasks}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    tasks = json.loads(result.stdout.strip().splitlines()[-1])
    for task_id in GPU_TASKS:
        assert f"queue `{tasks[task_id][0]}`" in tasks[task_id][1], "the task's docs name its queue"
    return {task_id: queue for task_id, (queue, _) in tasks.items()}


def test_gpu_tasks_go_to_the_gpu_queue_and_the_rest_to_the_default_queue():
    from airflow.configuration import conf

    default = conf.get("operators", "default_queue")
    queues = _queues(None)
    assert GPU_TASKS <= set(queues)
    assert {t: q for t, q in queues.items() if t in GPU_TASKS} == dict.fromkeys(GPU_TASKS, "gpu")
    assert {q for t, q in queues.items() if t not in GPU_TASKS} == {default}

    renamed = _queues("a100-nodes")
    assert {renamed[t] for t in GPU_TASKS} == {"a100-nodes"}
    assert {q for t, q in renamed.items() if t not in GPU_TASKS} == {default}


def test_a_bad_gpu_queue_name_is_refused_with_the_variable_named(monkeypatch):
    from grounding_ops.pipeline.docker_tasks import gpu_queue

    monkeypatch.setenv("GROUNDING_OPS_GPU_QUEUE", "gpu nodes")
    with pytest.raises(ValueError, match="GROUNDING_OPS_GPU_QUEUE"):
        gpu_queue()
    monkeypatch.setenv("GROUNDING_OPS_GPU_QUEUE", "")
    assert gpu_queue() == "gpu"


# --------------------------------------------------------------------------- remote Docker daemon over TLS


def test_docker_connection_fields_become_a_daemon_or_a_clear_refusal():
    from grounding_ops.pipeline.docker_daemon import DockerDaemonError, daemon_from_connection

    pem = {
        "ca_cert": "-----BEGIN CERTIFICATE-----\nA\n",
        "client_cert": "-----BEGIN CERTIFICATE-----\nB\n",
        "client_key": "-----BEGIN PRIVATE KEY-----\nC\n",
    }
    assert daemon_from_connection("c", "tcp://gpu-1", None, pem).url == "tcp://gpu-1:2376"
    assert daemon_from_connection("c", "gpu-1", 3376, pem).url == "tcp://gpu-1:3376"
    assert daemon_from_connection("c", "unix:///run/d.sock", None, {}).url == "unix:///run/d.sock"
    with pytest.raises(DockerDaemonError, match="lacks client_cert, client_key.*without TLS"):
        daemon_from_connection("c", "tcp://gpu-1", 2375, {"ca_cert": pem["ca_cert"]})
    with pytest.raises(DockerDaemonError, match="not PEM"):
        daemon_from_connection("c", "tcp://gpu-1", 2376, {**pem, "client_key": "/etc/key.pem"})
    with pytest.raises(DockerDaemonError, match="no host"):
        daemon_from_connection("c", "", None, pem)


def _certificates(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, generated now."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def cert(subject: str, key, issuer_key, issuer: str, *extensions) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name(issuer))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = cert(
        "grounding-test-ca",
        ca_key,
        ca_key,
        "grounding-test-ca",
        (x509.BasicConstraints(ca=True, path_length=None), True),
    )
    server = cert(
        "127.0.0.1",
        server_key,
        ca_key,
        "grounding-test-ca",
        (
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            False,
        ),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
    )
    client = cert(
        "grounding-airflow-worker",
        client_key,
        ca_key,
        "grounding-test-ca",
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False),
    )
    files = {}
    for label, obj in (("ca", ca), ("server", server), ("client", client)):
        files[label] = folder / f"{label}.pem"
        files[label].write_bytes(obj.public_bytes(serialization.Encoding.PEM))
    for label, key in (("server-key", server_key), ("client-key", client_key)):
        files[label] = folder / f"{label}.pem"
        files[label].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        files[label].chmod(0o600)
    return files


class TlsDaemon:
    """A second dockerd on a loopback TCP port that accepts only clients with our client certificate."""

    def __init__(self, url: str, certs: dict[str, Path]) -> None:
        self.url = url
        self.certs = certs

    def cli(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                "docker",
                "--host",
                self.url,
                "--tlsverify",
                "--tlscacert",
                str(self.certs["ca"]),
                "--tlscert",
                str(self.certs["client"]),
                "--tlskey",
                str(self.certs["client-key"]),
                *args,
            ],
            capture_output=True,
            text=True,
            **kwargs,
        )

    def client(self):
        import docker

        tls = docker.tls.TLSConfig(
            ca_cert=str(self.certs["ca"]),
            verify=True,
            client_cert=(str(self.certs["client"]), str(self.certs["client-key"])),
        )
        client = docker.DockerClient(base_url=self.url.replace("tcp://", "https://"), tls=tls, version="1.41")
        client.api.trust_env = False  # else REQUESTS_CA_BUNDLE replaces our CA (psf/requests#3829)
        return client

    def connection(self) -> str:
        host, port = self.url.removeprefix("tcp://").rsplit(":", 1)
        return json.dumps(
            {
                "conn_type": "docker",
                "host": f"tcp://{host}",
                "port": int(port),
                "extra": {
                    "ca_cert": self.certs["ca"].read_text(),
                    "client_cert": self.certs["client"].read_text(),
                    "client_key": self.certs["client-key"].read_text(),
                },
            }
        )

    def load(self, image: str) -> None:
        """``docker save | docker load`` from the local daemon into this one."""
        if self.cli("image", "inspect", image, timeout=60).returncode == 0:
            return
        save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
        loaded = subprocess.run(
            [
                "docker",
                "--host",
                self.url,
                "--tlsverify",
                "--tlscacert",
                str(self.certs["ca"]),
                "--tlscert",
                str(self.certs["client"]),
                "--tlskey",
                str(self.certs["client-key"]),
                "load",
            ],
            stdin=save.stdout,
            capture_output=True,
            text=True,
            timeout=900,
        )
        save.stdout.close()
        assert save.wait(timeout=60) == 0 and loaded.returncode == 0, loaded.stderr[-2000:]


@pytest.fixture(scope="module")
def tls_docker_daemon(docker_daemon) -> TlsDaemon:
    """`dockerd --tlsverify` on 127.0.0.1 with its own data-root, exec-root and pidfile; stopped by PID."""
    import shutil
    import tempfile

    from grounding_ops import services

    dockerd = shutil.which("dockerd")
    if not dockerd or os.geteuid() != 0:
        pytest.skip("a second Docker daemon needs dockerd and root")
    root = Path(tempfile.mkdtemp(prefix="gd2-"))  # short: containerd's socket paths have a length limit
    (root / "certs").mkdir()
    certs = _certificates(root / "certs")
    (root / "daemon.json").write_text("{}")
    port = services.free_port()
    proc = services.ManagedProcess(
        name="dockerd-tls",
        argv=[
            dockerd,
            "--bridge=none",
            "--iptables=false",
            "--ip-masq=false",
            "--data-root",
            str(root / "data"),
            "--exec-root",
            str(root / "exec"),
            "--pidfile",
            str(root / "dockerd.pid"),
            "--config-file",
            str(root / "daemon.json"),
            "--host",
            f"tcp://127.0.0.1:{port}",
            "--tlsverify",
            "--tlscacert",
            str(certs["ca"]),
            "--tlscert",
            str(certs["server"]),
            "--tlskey",
            str(certs["server-key"]),
        ],
        env=dict(os.environ),
        state_dir=root,
        marker=str(root / "data"),
    )
    daemon = TlsDaemon(f"tcp://127.0.0.1:{port}", certs)
    proc.start()
    try:
        services.wait_until(
            lambda: daemon.cli("version", timeout=10).returncode == 0,
            timeout=90,
            what="second dockerd (TLS)",
            logfile=proc.logfile,
            process=proc,
        )
        # Without the client certificate the daemon refuses the connection.
        plain = subprocess.run(["docker", "--host", daemon.url, "version"], capture_output=True, text=True, timeout=30)
        assert plain.returncode != 0
        yield daemon
    finally:
        for container in daemon.cli("ps", "-aq", timeout=30).stdout.split():
            daemon.cli("rm", "-f", container, timeout=60)
        proc.stop(timeout=30)
        # dockerd leaves its host network namespace bind-mounted under the exec-root: unmount what is ours.
        ours = [
            line.split()[1]
            for line in Path("/proc/mounts").read_text().splitlines()
            if line.split()[1].startswith(str(root) + "/")
        ]
        for mount in sorted(ours, key=len, reverse=True):
            subprocess.run(["umount", mount], capture_output=True, timeout=30)
        shutil.rmtree(root, ignore_errors=True)


def _ti_context(task_id: str, try_number: int):
    from types import SimpleNamespace

    return {
        "ti": SimpleNamespace(
            dag_id="grounding_train", run_id="manual__remote", task_id=task_id, try_number=try_number, map_index=-1
        )
    }


@pytest.mark.slow
@pytest.mark.docker
def test_container_on_a_remote_daemon_is_named_killed_and_removed_there(tls_docker_daemon, base_image, monkeypatch):
    import threading
    import time

    import docker

    from grounding_ops.pipeline.docker_tasks import GroundingContainerOperator

    tls_docker_daemon.load(base_image)
    monkeypatch.setenv("AIRFLOW_CONN_GPU_NODE_1", tls_docker_daemon.connection())
    monkeypatch.setenv("AIRFLOW_VAR_GROUNDING_DOCKER_CONN_ID", "gpu_node_1")  # every container task, no DAG edit
    monkeypatch.setenv("AIRFLOW_VAR_GROUNDING_TRAINER_IMAGE_CPU", base_image)
    monkeypatch.setenv("AIRFLOW_CONN_GROUNDING_S3", json.dumps({"conn_type": "aws", "login": "AKID", "password": "s"}))
    op = GroundingContainerOperator(task_id="killme", plan={"engine": "cpu", "command": ["sleep", "300"]})
    errors: list[BaseException] = []

    def run():
        try:
            op.execute(_ti_context("killme", int(time.time())))
        except BaseException as exc:  # noqa: BLE001 - the stopped container fails execute
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.time() + 90
    while time.time() < deadline and not op.container:
        time.sleep(0.2)
    assert op.container, "the container did not start on the remote daemon"
    remote = tls_docker_daemon.client()
    container = remote.containers.get(op.container_name)  # the per-try name, on the remote daemon
    assert container.attrs["HostConfig"]["NetworkMode"] == "host"
    local = docker.DockerClient(base_url="unix:///var/run/docker.sock")
    with pytest.raises(docker.errors.NotFound):
        local.containers.get(op.container_name)
    tls_folder = Path(op.tls_ca_cert).parent
    assert tls_folder.stat().st_mode & 0o777 == 0o700
    assert {p.stat().st_mode & 0o777 for p in tls_folder.iterdir()} == {0o600}
    op.on_kill()
    thread.join(timeout=90)
    assert not thread.is_alive() and errors
    with pytest.raises(docker.errors.NotFound):
        remote.containers.get(op.container_name)
    assert not tls_folder.exists(), "the TLS material is removed when the task ends"


@pytest.mark.slow
@pytest.mark.docker
@pytest.mark.heavy
def test_training_container_runs_through_a_docker_connection_to_a_tls_daemon(
    tls_docker_daemon, trainer_cpu_image, s3_service, mlflow_env, tmp_path, monkeypatch
):
    import uuid

    from grounding_ops.data.prepare import PrepareSettings, prepare
    from grounding_ops.data.synthetic import generate_synthetic
    from grounding_ops.pipeline.docker_tasks import TrainContainerOperator
    from grounding_ops.training.presets import get_preset

    tls_docker_daemon.load(trainer_cpu_image)
    preset = get_preset("tiny-cpu")
    prefix = f"remote-train-{uuid.uuid4().hex[:8]}"
    client = s3_service.client()
    data = generate_synthetic(tmp_path / "synthetic", n_images=8)
    dataset = prepare(
        [str(data.annotations)],
        images_root=str(data.images_root),
        output_uri=s3_service.uri(prefix, "datasets"),
        settings=PrepareSettings(min_pixels=preset.min_pixels, max_pixels=preset.max_pixels),
        s3_client=client,
    )
    output = s3_service.uri(prefix, "run")
    monkeypatch.setenv("AIRFLOW_CONN_GPU_NODE_1", tls_docker_daemon.connection())
    monkeypatch.setenv("AIRFLOW_VAR_GROUNDING_TRAINER_IMAGE_CPU", trainer_cpu_image)
    monkeypatch.setenv(
        "AIRFLOW_CONN_GROUNDING_S3",
        json.dumps(
            {
                "conn_type": "aws",
                "login": s3_service.env["AWS_ACCESS_KEY_ID"],
                "password": s3_service.env["AWS_SECRET_ACCESS_KEY"],
                "extra": {"endpoint_url": s3_service.endpoint, "region_name": "us-east-1"},
            }
        ),
    )
    monkeypatch.setenv("WANDB_MODE", "disabled")
    plan = {
        "engine": "cpu",
        "output_uri": output,
        "dataset_version": dataset.version,
        "dataset_uri": dataset.dataset_uri,
        "fingerprint": "remote-daemon",
        "environment": {"WANDB_MODE": "disabled"},
        "command": [
            "train",
            "--engine",
            "cpu",
            "--preset",
            "tiny-cpu",
            "--set",
            "total_steps=2",
            "--set",
            "sft_warmup_steps=2",
            "--set",
            "save_freq=1",
            "--dataset",
            dataset.dataset_uri,
            "--output",
            output,
        ],
    }
    op = TrainContainerOperator(task_id="train", plan=plan, docker_conn_id="gpu_node_1")
    summary = op.execute(_ti_context("train", 1))
    assert summary["steps_done"] == 2 and summary["output_uri"] == output
    assert op.docker_url == tls_docker_daemon.url
    names = [c.name for c in tls_docker_daemon.client().containers.list(all=True)]
    assert op.container_name not in names, "auto_remove cleans up on the remote daemon too"
