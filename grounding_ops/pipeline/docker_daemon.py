"""Which Docker daemon a trainer container runs on: the local socket, or a GPU node's daemon over TLS.

A deployment with remote GPU nodes names an Airflow connection per daemon (any type; ``docker``
or ``generic`` both work) and selects it with the container operators' ``docker_conn_id``, or
for every container task at once with the Variable ``grounding_docker_conn_id``:

- ``host``: ``tcp://gpu-node-1.internal`` (or the bare host name), ``port``: 2376;
- ``extra``: ``{"ca_cert": "<PEM>", "client_cert": "<PEM>", "client_key": "<PEM>"}`` — the CA
  that signed the daemon's certificate, and the client certificate and key the daemon trusts
  (``dockerd --tlsverify --tlscacert ... --tlscert ... --tlskey ...``).

A TCP daemon without TLS gives root on its node to anyone who can reach the port, so a ``tcp://``
connection without all three certificates is refused. ``unix://`` paths need no certificates.
Without a connection the local socket (``DOCKER_HOST`` or ``/var/run/docker.sock``) is used.

The PEMs are written, for the duration of the task only, into a fresh 0700 folder as 0600
files (docker-py reads certificates from files) and removed when the task ends. In this
connection ``host`` is the daemon, not a registry: pull credentials belong to the daemon's node
(``docker login`` there) or the image is loaded onto it in advance.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

from airflow.providers.docker.hooks.docker import DockerHook
from docker import APIClient
from grounding_ops.vocabulary import DOCKER_CONN_VARIABLE

DEFAULT_TLS_PORT = 2376
PEM_KEYS = ("ca_cert", "client_cert", "client_key")


class DockerDaemonError(ValueError):
    """The Docker connection does not describe a daemon we can reach safely; the message says what to fix."""


@dataclass(frozen=True)
class DockerDaemon:
    """A daemon URL and, for TCP, the TLS material (PEM text) to reach it."""

    url: str
    ca_cert: str = field(default="", repr=False)
    client_cert: str = field(default="", repr=False)
    client_key: str = field(default="", repr=False)

    @property
    def tls(self) -> bool:
        return bool(self.ca_cert)


def daemon_from_connection(
    conn_id: str, host: str | None, port: int | None, extra: Mapping[str, Any] | None
) -> DockerDaemon:
    """The daemon a connection's fields describe (see the module docstring for the fields)."""
    extra = dict(extra or {})
    if not host:
        raise DockerDaemonError(
            f"Docker connection {conn_id!r} has no host: set it to tcp://<gpu node> "
            f"(port {DEFAULT_TLS_PORT}) or unix:///path/to/docker.sock"
        )
    scheme, sep, rest = host.partition("://")
    if not sep:
        scheme, rest = "tcp", host
    if scheme == "unix":
        return DockerDaemon(url=f"unix://{rest}")
    if scheme not in ("tcp", "https"):
        raise DockerDaemonError(
            f"Docker connection {conn_id!r}: scheme {scheme!r} is not supported; use tcp:// "
            "(with TLS certificates in the extra) or unix://"
        )
    pems = {key: str(extra.get(key) or "").strip() for key in PEM_KEYS}
    missing = [key for key, value in pems.items() if not value]
    if missing:
        raise DockerDaemonError(
            f"Docker connection {conn_id!r} points at TCP daemon {rest} but its extra lacks {', '.join(missing)}: "
            "a daemon on TCP without TLS gives root on its node to anyone who reaches the port. Put the CA, "
            "client certificate and client key (PEM text) in the extra as ca_cert, client_cert, client_key"
        )
    for key, value in pems.items():
        if "-----BEGIN" not in value:
            raise DockerDaemonError(f"Docker connection {conn_id!r}: extra {key} is not PEM text (-----BEGIN ...)")
    hostport = rest.rstrip("/")
    if ":" not in hostport.rsplit("]", 1)[-1]:
        hostport = f"{hostport}:{port or DEFAULT_TLS_PORT}"
    return DockerDaemon(url=f"tcp://{hostport}", **pems)


def airflow_docker_daemon(conn_id: str | None) -> DockerDaemon | None:
    """The daemon of connection ``conn_id``, else of the Variable ``grounding_docker_conn_id``, else None."""
    from airflow.sdk import BaseHook, Variable

    conn_id = conn_id or (Variable.get(DOCKER_CONN_VARIABLE, default=None) or "").strip() or None
    if not conn_id:
        return None
    conn = BaseHook.get_connection(conn_id)
    return daemon_from_connection(conn_id, conn.host, conn.port, conn.extra_dejson)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text if text.endswith("\n") else text + "\n")


class TlsFiles:
    """The daemon's PEMs as 0600 files in a fresh 0700 folder, for as long as the task runs."""

    def __init__(self, daemon: DockerDaemon) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="grounding-docker-tls-"))  # mkdtemp makes it 0700
        self.paths = {}
        for key in PEM_KEYS:
            path = self.folder / f"{key}.pem"
            _write_private(path, getattr(daemon, key))
            self.paths[key] = str(path)

    def operator_kwargs(self) -> dict[str, Any]:
        """DockerOperator's TLS arguments (the daemon's certificate is verified against the CA)."""
        return {
            "tls_ca_cert": self.paths["ca_cert"],
            "tls_client_cert": self.paths["client_cert"],
            "tls_client_key": self.paths["client_key"],
            "tls_verify": True,
        }

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class _DaemonClient(APIClient):
    """docker-py's client, deaf to the environment's CA bundle and proxies.

    requests lets ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` replace a session's own CA
    (psf/requests#3829), so on any host that sets them the daemon's certificate would be checked
    against the wrong CA and the connection refused. A daemon is never reached through a proxy.
    """

    trust_env = property(lambda self: False, lambda self, value: None)


class DaemonDockerHook(DockerHook):
    """DockerHook for one daemon over TLS, verified against the connection's own CA."""

    def __init__(self, *, base_url: str, tls: Any, version: str | None, timeout: int) -> None:
        super().__init__(base_url=base_url, tls=tls, version=version, timeout=timeout)
        self._daemon_url = base_url.replace("tcp://", "https://", 1)
        self._daemon_tls = tls
        self._daemon_version = version
        self._daemon_timeout = timeout

    @cached_property
    def api_client(self) -> APIClient:
        client = _DaemonClient(
            base_url=self._daemon_url, version=self._daemon_version, tls=self._daemon_tls, timeout=self._daemon_timeout
        )
        client.ping()
        self._client_created = True
        return client
