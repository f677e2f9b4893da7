"""The "Grounding models" page of the Airflow plugin: registered model versions, live from MLflow.

``load_page()`` reads one page of versions of the registered model (newest first, cursor paginated
with MLflow's page tokens) through ``grounding_ops.registry.models``, plus the champion's
per-source metrics and the promotion decisions recorded on the versions. ``render_page()`` turns
it into HTML (a metric-over-versions chart as inline SVG, the champion's per-source breakdown, the
versions, the decision history with its numbers, links to the runs) where every value is escaped
and only http(s) links are emitted.

``create_app()`` builds the FastAPI app the plugin mounts in the api-server. That process also
serves the UI and the task Execution API, so the page never holds its event loop: the handlers
are plain functions (FastAPI runs them in its threadpool), MLflow calls made for the page use
short timeouts and few retries (``GROUNDING_OPS_PAGE_MLFLOW_TIMEOUT``/``_RETRIES``), and answers
are kept in a small TTL cache (``GROUNDING_OPS_PAGE_CACHE_SECONDS``; a failure is remembered for a
few seconds so a down MLflow is not asked again by every reload). Every route needs an
authenticated Airflow user (the api-server's JWT check) who may read the ``grounding_train`` DAG
(the auth manager's ``requires_access_dag("GET")``), and only the configured model is shown.
"""

from __future__ import annotations

import html
import math
import os
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable
from urllib.parse import quote, urlencode, urlparse

# FastAPI resolves the route annotations from this module's globals (postponed annotations).
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from grounding_ops.pipeline.assets import model_name as default_model_name
from grounding_ops.pipeline.mlflow_connection import redact
from grounding_ops.vocabulary import CHAMPION_ALIAS, DEFAULT_METRIC, METRICS, Tag

TRAIN_DAG_ID = "grounding_train"
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20
METRIC_COLUMNS: tuple[tuple[str, str], ...] = tuple(
    (name, METRICS[name].label) for name in ("acc_at_0_5", "acc_at_0_75", "mean_iou")
)
DECISION_PREFIX = Tag.PROMOTION_PREFIX
SOURCE_PREFIX = "source/"  # per-source metrics of an evaluation run: source/<name>/<metric>
PAGE_TIMEOUT_ENV = "GROUNDING_OPS_PAGE_MLFLOW_TIMEOUT"
PAGE_RETRIES_ENV = "GROUNDING_OPS_PAGE_MLFLOW_RETRIES"
PAGE_CACHE_ENV = "GROUNDING_OPS_PAGE_CACHE_SECONDS"
DEFAULT_TIMEOUT_S = 3
DEFAULT_RETRIES = 1
DEFAULT_CACHE_S = 30.0
FAILURE_CACHE_S = 5.0
# What limit_mlflow_requests() sets in the (api-server) process.
PAGE_MLFLOW_VARIABLES = (
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER",
)


class MlflowUnavailable(RuntimeError):
    """MLflow did not answer the page in time; the message names the (credential-free) server."""


@dataclass
class ModelRow:
    version: str
    created: str
    aliases: list[str]
    metrics: dict[str, float | None]
    dataset_version: str
    training_run: str
    source: str
    mlflow_url: str
    wandb_url: str
    airflow_url: str
    evaluation_run_id: str
    evaluation_url: str = ""

    @property
    def champion(self) -> bool:
        return CHAMPION_ALIAS in self.aliases


@dataclass
class Decision:
    """A promotion decision recorded on a version (``grounding.promotion.*`` tags)."""

    version: str
    decided_at: str
    promoted: bool
    metric: str
    candidate_value: float | None
    baseline: str
    baseline_value: float | None
    min_delta: float | None
    champion_before: str
    reason: str
    evaluation_url: str
    airflow_url: str


@dataclass
class ModelPage:
    model_name: str
    rows: list[ModelRow] = field(default_factory=list)
    next_page_token: str | None = None
    page_size: int = DEFAULT_PAGE_SIZE
    error: str = ""
    champion: str | None = None
    metric: str = "acc_at_0_5"
    champion_sources: dict[str, dict[str, float]] = field(default_factory=dict)
    decisions: list[Decision] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "page_size": self.page_size,
            "next_page_token": self.next_page_token,
            "error": self.error,
            "champion": self.champion,
            "metric": self.metric,
            "champion_sources": self.champion_sources,
            "decisions": [asdict(d) for d in self.decisions],
            "versions": [{**asdict(r), "champion": r.champion} for r in self.rows],
        }


def finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def safe_url(url: str | None) -> str:
    """``url`` if it is an absolute http(s) link, else empty (no ``javascript:`` and friends)."""
    try:
        parsed = urlparse(url or "")
    except ValueError:
        return ""
    if parsed.scheme.lower() not in ("http", "https") or not parsed.netloc:
        return ""
    return redact(str(url))


def airflow_run_url(airflow_base: str, ref: str) -> str:
    """Link to an Airflow run from a ``dag_id/run_id`` reference (relative without a base URL)."""
    dag_id, sep, run_id = (ref or "").partition("/")
    if not sep or not dag_id or not run_id:
        return ""
    base = safe_url(airflow_base).rstrip("/")  # empty: a link relative to the api-server serving the page
    return f"{base}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


def mlflow_run_url(tracking_uri: str, run_id: str) -> str:
    base = safe_url(tracking_uri).rstrip("/")
    return f"{base}/#/runs/{quote(run_id, safe='')}" if base and run_id else ""


def _decision(tags: dict[str, str], version: str, tracking_uri: str, airflow_url: str) -> Decision | None:
    if DECISION_PREFIX + "promoted" not in tags:
        return None
    get = lambda key: tags.get(DECISION_PREFIX + key, "")  # noqa: E731
    return Decision(
        version=version,
        decided_at=get("decided_at"),
        promoted=get("promoted") == "true",
        metric=get("metric"),
        candidate_value=finite(get("candidate_value")),
        baseline=get("baseline") or "none",
        baseline_value=finite(get("baseline_value")),
        min_delta=finite(get("min_delta")),
        champion_before=get("champion_before"),
        reason=get("reason")[:500],
        evaluation_url=mlflow_run_url(tracking_uri, get("eval_run_id")),
        airflow_url=airflow_url,
    )


def champion_sources(client: Any, name: str) -> dict[str, dict[str, float]]:
    """The champion's per-source metrics (``source/<name>/<metric>`` of its evaluation run)."""
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return {}
        raise
    run_id = (version.tags or {}).get(Tag.EVALUATION_RUN_ID) or version.run_id
    if not run_id:
        return {}
    try:
        metrics = client.get_run(run_id).data.metrics
    except MlflowException as exc:
        if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise
    shown = {key for key, _ in METRIC_COLUMNS}
    out: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        if not key.startswith(SOURCE_PREFIX):
            continue
        source, _, metric = key[len(SOURCE_PREFIX) :].rpartition("/")
        number = finite(value)
        if source and metric in shown and number is not None:
            out.setdefault(source, {})[metric] = number
    return dict(sorted(out.items()))


def list_model_versions(
    tracking_uri: str,
    name: str,
    *,
    page_size: int = DEFAULT_PAGE_SIZE,
    page_token: str | None = None,
    airflow_base: str = "",
) -> ModelPage:
    """One page of ``name``'s versions, newest first, with the champion's sources and the decisions."""
    from mlflow.tracking import MlflowClient

    from grounding_ops.registry import models

    if not re.fullmatch(MODEL_NAME_PATTERN, name):
        raise ValueError(f"model name {name!r} must match {MODEL_NAME_PATTERN}")
    page_size = max(1, min(int(page_size), MAX_PAGE_SIZE))
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    listing = models.list_model_versions(
        name,
        page_size=page_size,
        page_token=page_token or None,
        client=client,
        ui_base_url=safe_url(tracking_uri).rstrip("/") or None,
    )
    page = ModelPage(
        model_name=name,
        page_size=page_size,
        next_page_token=listing.next_page_token,
        champion=listing.champion,
        metric=DEFAULT_METRIC,
    )
    if not listing.rows and not page_token:
        page.error = f"no versions of {name!r} registered yet: run grounding_train to create one"
    for row in listing.rows:
        tags = dict(row.tags or {})
        airflow_url = airflow_run_url(airflow_base, tags.get(Tag.AIRFLOW_RUN, ""))
        page.rows.append(
            ModelRow(
                version=str(row.version),
                created=str(row.created_at),
                aliases=list(row.aliases),
                metrics={key: finite(row.metrics.get(key)) for key, _ in METRIC_COLUMNS},
                dataset_version=str(row.dataset_version or ""),
                training_run=str(row.training_output_uri or ""),
                source=redact(str(row.source or "")),
                mlflow_url=safe_url(row.mlflow_url),
                wandb_url=safe_url(row.wandb_run),
                airflow_url=airflow_url,
                evaluation_run_id=str(row.evaluation_run_id or ""),
                evaluation_url=mlflow_run_url(tracking_uri, str(row.evaluation_run_id or "")),
            )
        )
        decision = _decision(tags, str(row.version), tracking_uri, airflow_url)
        if decision is not None:
            page.decisions.append(decision)
            page.metric = decision.metric if decision.metric in dict(METRIC_COLUMNS) else page.metric
    if page.champion:
        page.champion_sources = champion_sources(client, name)
    return page


# ----------------------------------------------------------------------------- HTML

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1a202c}
table{border-collapse:collapse;width:100%;font-size:14px;margin-bottom:1.5rem}
th,td{border-bottom:1px solid #e2e8f0;padding:6px 8px;text-align:left;vertical-align:top}
th{background:#f7fafc}
tr.champion{background:#fefcbf;font-weight:600}
.alias{display:inline-block;padding:0 6px;border-radius:8px;background:#e2e8f0;margin-right:4px}
.alias.champion{background:#d69e2e;color:#fff}
.num{font-variant-numeric:tabular-nums;text-align:right}
.muted{color:#718096}
.error{background:#fed7d7;color:#742a2a;padding:8px 12px;border-radius:4px}
.promoted{color:#276749;font-weight:600}.rejected{color:#9b2c2c}
nav a{margin-right:1rem}
svg text{font-size:11px;fill:#4a5568}
"""


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _link(url: str, label: str) -> str:
    url = url if url.startswith("/") and not url.startswith("//") else safe_url(url)
    if not url:
        return ""
    return (
        f'<a href="{html.escape(url, quote=True)}" target="_blank" rel="noopener noreferrer">{html.escape(label)}</a>'
    )


def render_chart(page: ModelPage, *, width: int = 640, height: int = 200) -> str:
    """The promotion metric over the versions of this page (oldest left), as inline SVG."""
    e = html.escape
    points = [(row, row.metrics.get(page.metric)) for row in reversed(page.rows)]
    points = [(row, value) for row, value in points if value is not None]
    if not points:
        return '<p class="muted" id="chart">no metric values to chart yet</p>'
    values = [value for _, value in points]
    low, high = min(0.0, min(values)), max(1.0, max(values))
    pad = 30
    step = (width - 2 * pad) / max(1, len(points) - 1)

    def xy(i: int, value: float) -> tuple[float, float]:
        return pad + i * step, height - pad - (value - low) / (high - low) * (height - 2 * pad)

    coords = [xy(i, value) for i, (_, value) in enumerate(points)]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
    dots = []
    for (row, value), (x, y) in zip(points, coords):
        colour = "#d69e2e" if row.champion else "#3182ce"
        dots.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{6 if row.champion else 4}" fill="{colour}" '
            f'data-version="{e(row.version)}"><title>v{e(row.version)}: {_fmt(value)}</title></circle>'
            f'<text x="{x:.1f}" y="{height - 8}" text-anchor="middle">v{e(row.version)}</text>'
        )
    label = dict(METRIC_COLUMNS).get(page.metric, page.metric)
    return (
        f'<svg id="chart" role="img" aria-label="{e(label)} per version" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">'
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#cbd5e0"/>'
        f'<text x="4" y="{pad - 10}">{e(label)} ({_fmt(high)} top, {_fmt(low)} bottom)</text>'
        f'<polyline points="{line}" fill="none" stroke="#3182ce" stroke-width="2"/>{"".join(dots)}</svg>'
    )


def render_sources(page: ModelPage) -> str:
    e = html.escape
    if not page.champion_sources:
        return '<p class="muted" id="sources">no per-source metrics recorded for the champion</p>'
    head = "".join(f'<th class="num">{e(label)}</th>' for _, label in METRIC_COLUMNS)
    body = "".join(
        f'<tr data-source="{e(source)}"><td>{e(source)}</td>'
        + "".join(f'<td class="num">{_fmt(values.get(k))}</td>' for k, _ in METRIC_COLUMNS)
        + "</tr>"
        for source, values in page.champion_sources.items()
    )
    return f'<table id="sources"><thead><tr><th>Source</th>{head}</tr></thead><tbody>{body}</tbody></table>'


def render_decisions(page: ModelPage) -> str:
    e = html.escape
    if not page.decisions:
        return '<p class="muted" id="decisions">no promotion decisions on this page</p>'
    rows = []
    for d in page.decisions:
        verdict = (
            '<span class="promoted">promoted</span>' if d.promoted else '<span class="rejected">not promoted</span>'
        )
        links = " ".join(
            x for x in (_link(d.evaluation_url, "evaluation run"), _link(d.airflow_url, "Airflow run")) if x
        )
        rows.append(
            f'<tr data-decision="{e(d.version)}"><td>v{e(d.version)}</td><td class="muted">{e(d.decided_at)}</td>'
            f'<td>{verdict}</td><td>{e(d.metric)}</td><td class="num">{_fmt(d.candidate_value)}</td>'
            f'<td>{e(d.baseline)}</td><td class="num">{_fmt(d.baseline_value)}</td>'
            f'<td class="num">{_fmt(d.min_delta)}</td>'
            f"<td>{e('v' + d.champion_before if d.champion_before else 'none')}</td>"
            f"<td>{e(d.reason)}</td><td>{links}</td></tr>"
        )
    return (
        '<table id="decisions"><thead><tr><th>Version</th><th>Decided</th><th>Decision</th><th>Metric</th>'
        '<th class="num">Candidate</th><th>Baseline</th><th class="num">Baseline value</th>'
        '<th class="num">Min delta</th><th>Champion before</th><th>Reason</th><th>Links</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def render_page(page: ModelPage, *, self_path: str = "", page_token: str | None = None) -> str:
    """The page as HTML. Every value from the registry is escaped; links are http(s) only."""
    e = html.escape
    head = "".join(f'<th class="num">{e(label)}</th>' for _, label in METRIC_COLUMNS)
    rows = []
    for row in page.rows:
        alias_html = "".join(
            f'<span class="alias{" champion" if a == "champion" else ""}">{e(a)}</span>' for a in row.aliases
        )
        metric_html = "".join(f'<td class="num">{_fmt(row.metrics.get(k))}</td>' for k, _ in METRIC_COLUMNS)
        links = " ".join(
            x
            for x in (
                _link(row.mlflow_url, "MLflow"),
                _link(row.evaluation_url, "evaluation run"),
                _link(row.wandb_url, "W&B"),
                _link(row.airflow_url, "Airflow run"),
            )
            if x
        )
        rows.append(
            f'<tr class="{"champion" if row.champion else "version"}" data-version="{e(row.version)}">'
            f"<td>v{e(row.version)}</td><td>{alias_html}</td>{metric_html}"
            f"<td>{e(row.dataset_version)}</td><td>{e(row.training_run)}</td>"
            f'<td class="muted">{e(row.created)}</td><td>{links}</td></tr>'
        )
    body = "".join(rows) or f'<tr><td colspan="9" class="muted">{e(page.error or "no versions")}</td></tr>'
    nav = []
    if page_token:
        nav.append(f'<a href="{e(self_path + "?" + urlencode({"page_size": page.page_size}))}">« newest</a>')
    if page.next_page_token:
        query = urlencode({"page_size": page.page_size, "page_token": page.next_page_token})
        nav.append(f'<a href="{e(self_path + "?" + query)}" id="older">older »</a>')
    champion = f"v{e(page.champion)}" if page.champion else "none yet"
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Grounding models</title><style>{_STYLE}</style></head><body>"
        f'<h1>Grounding models</h1><p class="muted">Registered model <b>{e(page.model_name)}</b>; '
        f"champion: <b>{champion}</b> (highlighted).</p>"
        f"<h2>{e(dict(METRIC_COLUMNS).get(page.metric, page.metric))} over versions</h2>{render_chart(page)}"
        f"<h2>Champion by source</h2>{render_sources(page)}"
        '<h2>Versions</h2><table id="versions"><thead><tr><th>Version</th><th>Aliases</th>'
        f"{head}<th>Dataset version</th><th>Training run</th><th>Created</th><th>Links</th></tr></thead>"
        f"<tbody>{body}</tbody></table><nav>{''.join(nav)}</nav>"
        f"<h2>Promotion decisions</h2>{render_decisions(page)}</body></html>"
    )


def render_unavailable(message: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Grounding models</title><style>{_STYLE}</style></head><body><h1>Grounding models</h1>"
        f'<p class="error" id="unavailable">{html.escape(message)}</p>'
        '<p class="muted">The rest of Airflow is not affected; reload the page once MLflow answers.</p></body></html>'
    )


# ----------------------------------------------------------------------------- cache and MLflow limits


class TTLCache:
    """A small thread-safe cache: answers for ``ttl`` seconds, failures for ``failure_ttl``."""

    def __init__(self, ttl: float, failure_ttl: float = FAILURE_CACHE_S, max_entries: int = 64) -> None:
        self.ttl, self.failure_ttl, self.max_entries = ttl, failure_ttl, max_entries
        self._entries: dict[Any, tuple[float, Any, BaseException | None]] = {}
        self._lock = threading.Lock()

    def get_or_load(self, key: Any, load: Callable[[], Any]) -> Any:
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(key)
        if hit is not None and hit[0] > now:
            if hit[2] is not None:
                raise hit[2]
            return hit[1]
        try:
            value = load()
        except MlflowUnavailable as exc:
            self._put(key, (time.monotonic() + self.failure_ttl, None, exc))
            raise
        if self.ttl > 0:
            self._put(key, (time.monotonic() + self.ttl, value, None))
        return value

    def _put(self, key: Any, entry: tuple[float, Any, BaseException | None]) -> None:
        with self._lock:
            if len(self._entries) >= self.max_entries:
                now = time.monotonic()
                self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
                if len(self._entries) >= self.max_entries:
                    self._entries.pop(next(iter(self._entries)))
            self._entries[key] = entry

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def _env_number(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name) or default)
    except ValueError:
        return default
    return value if math.isfinite(value) and value >= 0 else default


def limit_mlflow_requests() -> None:
    """Short timeouts and few retries for the MLflow clients of this (api-server) process.

    MLflow reads these per request; its defaults (120 s timeout, 7 retries with backoff) would keep
    a page request waiting for minutes on a stalled server.
    """
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, int(_env_number(PAGE_TIMEOUT_ENV, DEFAULT_TIMEOUT_S))))
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(int(_env_number(PAGE_RETRIES_ENV, DEFAULT_RETRIES)))
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"] = "0"


# ----------------------------------------------------------------------------- FastAPI app


def tracking_uri_from_env() -> str:
    from grounding_ops.pipeline.hooks import mlflow_tracking_uri

    return mlflow_tracking_uri()


def airflow_base_url() -> str:
    try:
        from airflow.configuration import conf

        return conf.get("api", "base_url", fallback="") or ""
    except Exception:
        return os.environ.get("AIRFLOW__API__BASE_URL", "")


def airflow_authorizer(request: Request, user: Any) -> None:
    """Raise 403 unless the auth manager lets ``user`` read the ``grounding_train`` DAG."""
    from airflow.api_fastapi.core_api.security import requires_access_dag

    requires_access_dag("GET", param_dag_id=TRAIN_DAG_ID)(request, user)


def create_app(
    tracking_uri: str | None = None,
    *,
    user_dependency: Any | None = None,
    authorizer: Callable[[Request, Any], None] | None = None,
    models: tuple[str, ...] | None = None,
    cache_seconds: float | None = None,
) -> Any:
    """The FastAPI app: ``/models`` (HTML page) and ``/api/models`` (the same data as JSON).

    ``user_dependency`` authenticates a request (default: the api-server's ``get_user``, which
    validates the Airflow JWT from the Authorization header or the ``_token`` cookie); ``authorizer``
    then checks the user may read ``grounding_train`` (default: the auth manager). Pages answer an
    unauthenticated browser with a redirect to the login page, the JSON endpoint with 401; a user
    without the permission gets 403. ``models`` are the registered models the page may show
    (default: the configured one, ``GROUNDING_OPS_MODEL_NAME``).
    """
    bearer = HTTPBearer(auto_error=False)
    authorize = authorizer or airflow_authorizer
    cache = TTLCache(_env_number(PAGE_CACHE_ENV, DEFAULT_CACHE_S) if cache_seconds is None else cache_seconds)

    class LoginRedirect(Exception):
        def __init__(self, url: str) -> None:
            self.url = url

    async def require_user(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Any:
        try:
            if user_dependency is not None:
                return await user_dependency(request, credentials)
            from airflow.api_fastapi.core_api.security import get_user

            return await get_user(request, None, credentials)
        except HTTPException as exc:
            wants_page = not request.url.path.rstrip("/").endswith("/api/models")
            if exc.status_code == 401 and wants_page and "text/html" in request.headers.get("accept", ""):
                raise LoginRedirect(_login_url(str(request.url))) from exc
            raise

    def require_permission(request: Request, user: Any = Depends(require_user)) -> Any:
        # A plain function: the auth manager may query the metadata DB, so FastAPI runs it in a thread.
        authorize(request, user)
        return user

    # Authentication and authorization run before anything else of a request (query validation included).
    app = FastAPI(
        title="Grounding models",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        dependencies=[Depends(require_permission)],
    )

    @app.exception_handler(LoginRedirect)
    async def to_login(request: Request, exc: LoginRedirect) -> RedirectResponse:
        return RedirectResponse(exc.url, status_code=302)

    def allowed_models() -> tuple[str, ...]:
        return tuple(models) if models else (default_model_name(),)

    def fetch(uri: str, model: str, page_size: int, page_token: str | None) -> ModelPage:
        limit_mlflow_requests()
        try:
            return list_model_versions(
                uri, model, page_size=page_size, page_token=page_token, airflow_base=airflow_base_url()
            )
        except Exception as exc:  # registry down or stalled: say so (never the URI's credentials)
            raise MlflowUnavailable(
                f"MLflow is unavailable at {redact(uri)} ({type(exc).__name__}); "
                "the models page will retry on the next reload"
            ) from None

    def load(model: str | None, page_size: int, page_token: str | None) -> ModelPage:
        names = allowed_models()
        model = model or names[0]
        if not re.fullmatch(MODEL_NAME_PATTERN, model):
            raise HTTPException(status_code=422, detail=f"model must match {MODEL_NAME_PATTERN}")
        if model not in names:
            raise HTTPException(
                status_code=404,
                detail=f"model {model!r} is not shown here; this page shows "
                f"{', '.join(names)} (GROUNDING_OPS_MODEL_NAME)",
            )
        if page_token is not None and not re.fullmatch(r"[A-Za-z0-9+/=_-]{1,2048}", page_token):
            raise HTTPException(status_code=422, detail="page_token is not a token returned by this page")
        try:
            uri = tracking_uri or tracking_uri_from_env()
        except Exception as exc:  # no connection and no MLFLOW_TRACKING_URI
            raise MlflowUnavailable(str(exc)) from None
        return cache.get_or_load((uri, model, page_size, page_token), lambda: fetch(uri, model, page_size, page_token))

    # Plain (sync) handlers: FastAPI runs them in its threadpool, never on the api-server's event loop.
    @app.get("/api/models")
    def models_json(
        model: str | None = Query(None, max_length=128),
        page_size: int = Query(DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE),
        page_token: str | None = Query(None, max_length=2048),
    ) -> JSONResponse:
        try:
            return JSONResponse(load(model, page_size, page_token).to_dict())
        except MlflowUnavailable as exc:
            return JSONResponse({"detail": str(exc), "mlflow_available": False}, status_code=503)

    @app.get("/models", response_class=HTMLResponse)
    def models_html(
        request: Request,
        model: str | None = Query(None, max_length=128),
        page_size: int = Query(DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE),
        page_token: str | None = Query(None, max_length=2048),
    ) -> HTMLResponse:
        headers = {
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'self'",
            "X-Content-Type-Options": "nosniff",
        }
        try:
            page = load(model, page_size, page_token)
        except MlflowUnavailable as exc:
            return HTMLResponse(render_unavailable(str(exc)), status_code=503, headers=headers)
        path = request.scope.get("root_path", "") + "/models"
        return HTMLResponse(render_page(page, self_path=path, page_token=page_token), headers=headers)

    app.state.cache = cache
    return app


def _login_url(next_url: str) -> str:
    try:
        from airflow.api_fastapi.app import get_auth_manager

        url = get_auth_manager().get_url_login()
    except Exception:
        url = "/auth/login"
    if not url or not (url.startswith("/") or safe_url(url)):
        url = "/auth/login"
    path = urlparse(next_url).path
    return f"{url}?{urlencode({'next': path})}"
