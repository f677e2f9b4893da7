"""The MLflow server of the platform, from the Airflow connection ``grounding_mlflow``.

``resolve()`` reads the connection (type http: host, schema, port; login/password for HTTP basic
auth, or a ``token`` in the extra for a bearer token) and falls back to ``MLFLOW_TRACKING_URI``.
Credentials never stay in the URI: ones embedded as ``user:password@`` are moved to the
credential fields, so the URI that ends up in XCom, links, lineage and error messages is clean.

``configure()`` hands the credentials to every MLflow client of this process the way MLflow reads
them (``MLFLOW_TRACKING_USERNAME``/``_PASSWORD``/``_TOKEN``, looked up on each request), masks them
in the task logs and returns the clean URI. The trainer containers never get any of this: only the
platform side talks to MLflow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit
from grounding_ops.vocabulary import MLFLOW_CONN_ID

CREDENTIAL_VARIABLES = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


class MlflowConfigError(RuntimeError):
    """No MLflow server is configured; the message says what to define."""


@dataclass(frozen=True)
class MlflowServer:
    uri: str
    username: str | None = None
    password: str | None = None
    token: str | None = None

    def __repr__(self) -> str:  # never print the secrets
        return f"MlflowServer(uri={self.uri!r}, username={self.username!r}, password=***, token=***)"

    def credential_env(self) -> dict[str, str]:
        env = {}
        if self.username:
            env["MLFLOW_TRACKING_USERNAME"] = self.username
        if self.password:
            env["MLFLOW_TRACKING_PASSWORD"] = self.password
        if self.token:
            env["MLFLOW_TRACKING_TOKEN"] = self.token
        return env


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """``uri`` without ``user:password@``, and the user and password it carried."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri, None, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    return urlunsplit(parts._replace(netloc=hostport)), unquote(user) or None, unquote(password) or None


def redact(uri: str) -> str:
    """``uri`` with any embedded credentials removed (for messages)."""
    try:
        return split_credentials(uri)[0]
    except ValueError:
        return "<unparseable URI>"


def from_connection(
    host: str,
    *,
    schema: str | None = None,
    port: int | None = None,
    login: str | None = None,
    password: str | None = None,
    extra: dict | None = None,
) -> MlflowServer:
    """The server described by an Airflow http connection's fields."""
    host = host.rstrip("/")
    if "://" not in host:
        host = f"{schema or 'http'}://{host}"
    uri, url_user, url_password = split_credentials(host)
    parts = urlsplit(uri)
    if port and parts.port is None:
        uri = urlunsplit(parts._replace(netloc=f"{parts.netloc}:{port}"))
    token = (extra or {}).get("token") or None
    return MlflowServer(
        uri=uri, username=login or url_user, password=password or url_password, token=str(token) if token else None
    )


def resolve(conn_id: str = MLFLOW_CONN_ID) -> MlflowServer:
    """The connection ``conn_id``, else ``MLFLOW_TRACKING_URI`` (+ MLflow's own credential variables)."""
    try:
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(conn_id)
    except Exception:  # connection not defined
        conn = None
    if conn is not None and conn.host:
        server = from_connection(
            conn.host,
            schema=conn.schema,
            port=conn.port,
            login=conn.login,
            password=conn.password,
            extra=conn.extra_dejson,
        )
        if server.username or server.password or server.token:
            return server
        # a connection without credentials keeps those given to MLflow the usual way
        return MlflowServer(
            uri=server.uri,
            username=os.environ.get("MLFLOW_TRACKING_USERNAME"),
            password=os.environ.get("MLFLOW_TRACKING_PASSWORD"),
            token=os.environ.get("MLFLOW_TRACKING_TOKEN"),
        )
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise MlflowConfigError(
            f"no MLflow server configured: define the Airflow connection {conn_id!r} "
            "(type http, host http://host:port, login/password or extra token when the "
            "server needs them) or set MLFLOW_TRACKING_URI"
        )
    clean, user, password = split_credentials(uri)
    return MlflowServer(
        uri=clean,
        username=user or os.environ.get("MLFLOW_TRACKING_USERNAME"),
        password=password or os.environ.get("MLFLOW_TRACKING_PASSWORD"),
        token=os.environ.get("MLFLOW_TRACKING_TOKEN"),
    )


def mask(server: MlflowServer) -> None:
    try:
        from airflow.sdk.log import mask_secret
    except ImportError:  # pragma: no cover - outside Airflow
        return
    for secret in (server.password, server.token):
        if secret:
            mask_secret(secret)


def configure(server: MlflowServer | None = None) -> str:
    """Give this process's MLflow clients the server's credentials; returns the clean tracking URI."""
    server = server or resolve()
    mask(server)
    for key in CREDENTIAL_VARIABLES:
        os.environ.pop(key, None)
    os.environ.update(server.credential_env())
    return server.uri


def tracking_uri(conn_id: str = MLFLOW_CONN_ID) -> str:
    """The clean tracking URI of the platform's MLflow, its credentials configured for this process."""
    return configure(resolve(conn_id))
