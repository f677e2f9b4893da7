"""The "Grounding models" page of the Airflow plugin: registered model versions, live from MLflow.

``list_model_versions()`` reads one page of versions of a registered model (newest first, cursor
paginated with MLflow's page tokens) through ``grounding_ops.registry.models``.
``render_page()`` turns it into HTML where every value is escaped and only http(s) links are
emitted. ``create_app()`` builds the FastAPI app the plugin mounts in the api-server; every route
requires an authenticated Airflow user (the api-server's own JWT check).
"""

from __future__ import annotations

import html
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import quote, urlencode, urlparse

# FastAPI resolves the route annotations from this module's globals (postponed annotations).
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from grounding_ops.pipeline.lineage import model_name as default_model_name

AIRFLOW_RUN_TAG = "grounding.airflow_run"
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20
METRIC_COLUMNS: tuple[tuple[str, str], ...] = (
    ("acc_at_0_5", "Acc@0.5"),
    ("acc_at_0_75", "Acc@0.75"),
    ("mean_iou", "mean IoU"),
)


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

    @property
    def champion(self) -> bool:
        return "champion" in self.aliases


@dataclass
class ModelPage:
    model_name: str
    rows: list[ModelRow] = field(default_factory=list)
    next_page_token: str | None = None
    page_size: int = DEFAULT_PAGE_SIZE
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "page_size": self.page_size,
            "next_page_token": self.next_page_token,
            "error": self.error,
            "versions": [{**asdict(r), "champion": r.champion} for r in self.rows],
        }


def safe_url(url: str | None) -> str:
    """``url`` if it is an absolute http(s) link, else empty (no ``javascript:`` and friends)."""
    try:
        parsed = urlparse(url or "")
    except ValueError:
        return ""
    return str(url) if parsed.scheme.lower() in ("http", "https") and parsed.netloc else ""


def airflow_run_url(airflow_base: str, ref: str) -> str:
    """Link to an Airflow run from a ``dag_id/run_id`` reference (relative without a base URL)."""
    dag_id, sep, run_id = (ref or "").partition("/")
    if not sep or not dag_id or not run_id:
        return ""
    base = safe_url(airflow_base).rstrip("/")  # empty: a link relative to the api-server serving the page
    return f"{base}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


def list_model_versions(
    tracking_uri: str,
    name: str,
    *,
    page_size: int = DEFAULT_PAGE_SIZE,
    page_token: str | None = None,
    airflow_base: str = "",
) -> ModelPage:
    """One page of ``name``'s versions, newest first (``grounding_ops.registry.models``), as page rows."""
    from mlflow.tracking import MlflowClient

    from grounding_ops.registry import models

    if not re.fullmatch(MODEL_NAME_PATTERN, name):
        raise ValueError(f"model name {name!r} must match {MODEL_NAME_PATTERN}")
    page_size = max(1, min(int(page_size), MAX_PAGE_SIZE))
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    listing = models.list_model_versions(name, page_size=page_size, page_token=page_token or None, client=client)
    page = ModelPage(model_name=name, page_size=page_size, next_page_token=listing.next_page_token)
    if not listing.rows and not page_token:
        page.error = f"no versions of {name!r} registered yet: run grounding_train to create one"
    for row in listing.rows:
        tags = dict(row.tags or {})
        page.rows.append(ModelRow(
            version=str(row.version),
            created=str(row.created_at),
            aliases=list(row.aliases),
            metrics={key: row.metrics.get(key) for key, _ in METRIC_COLUMNS},
            dataset_version=str(row.dataset_version or ""),
            training_run=str(row.training_run_id or tags.get("grounding.training_output_uri") or ""),
            source=str(row.source or ""),
            mlflow_url=safe_url(row.mlflow_url),
            wandb_url=safe_url(row.wandb_run),
            airflow_url=airflow_run_url(airflow_base, tags.get(AIRFLOW_RUN_TAG, "")),
            evaluation_run_id=str(row.evaluation_run_id or ""),
        ))
    return page


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1a202c}
table{border-collapse:collapse;width:100%;font-size:14px}
th,td{border-bottom:1px solid #e2e8f0;padding:6px 8px;text-align:left;vertical-align:top}
th{background:#f7fafc}
tr.champion{background:#fefcbf;font-weight:600}
.alias{display:inline-block;padding:0 6px;border-radius:8px;background:#e2e8f0;margin-right:4px}
.alias.champion{background:#d69e2e;color:#fff}
.num{font-variant-numeric:tabular-nums;text-align:right}
.muted{color:#718096}
nav a{margin-right:1rem}
"""


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _link(url: str, label: str) -> str:
    url = url if url.startswith("/") and not url.startswith("//") else safe_url(url)
    if not url:
        return ""
    return f'<a href="{html.escape(url, quote=True)}" target="_blank" rel="noopener noreferrer">{html.escape(label)}</a>'


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
        links = " ".join(x for x in (_link(row.mlflow_url, "MLflow"), _link(row.wandb_url, "W&B"),
                                      _link(row.airflow_url, "Airflow run")) if x)
        rows.append(
            f'<tr class="{"champion" if row.champion else "version"}" data-version="{e(row.version)}">'
            f"<td>v{e(row.version)}</td><td>{alias_html}</td>{metric_html}"
            f"<td>{e(row.dataset_version)}</td><td>{e(row.training_run)}</td>"
            f'<td class="muted">{e(row.created)}</td><td>{links}</td></tr>'
        )
    body = "".join(rows) or f'<tr><td colspan="9" class="muted">{e(page.error or "no versions")}</td></tr>'
    nav = []
    if page_token:
        nav.append(f'<a href="{e(self_path + "?" + urlencode({"model": page.model_name, "page_size": page.page_size}))}">'
                   "« newest</a>")
    if page.next_page_token:
        query = urlencode({"model": page.model_name, "page_size": page.page_size, "page_token": page.next_page_token})
        nav.append(f'<a href="{e(self_path + "?" + query)}" id="older">older »</a>')
    return (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>Grounding models</title><style>{_STYLE}</style></head><body>"
        f"<h1>Grounding models</h1><p class=\"muted\">Registered model <b>{e(page.model_name)}</b>; "
        "the champion row is highlighted.</p>"
        "<table id=\"versions\"><thead><tr><th>Version</th><th>Aliases</th>"
        f"{head}<th>Dataset version</th><th>Training run</th><th>Created</th><th>Links</th></tr></thead>"
        f"<tbody>{body}</tbody></table><nav>{''.join(nav)}</nav></body></html>"
    )


# ----------------------------------------------------------------------------- FastAPI app


def tracking_uri_from_env() -> str:
    from grounding_ops.pipeline.train_tasks import mlflow_tracking_uri

    return mlflow_tracking_uri()


def airflow_base_url() -> str:
    try:
        from airflow.configuration import conf

        return conf.get("api", "base_url", fallback="") or ""
    except Exception:
        return os.environ.get("AIRFLOW__API__BASE_URL", "")


def create_app(
    tracking_uri: str | None = None,
    *,
    user_dependency: Any | None = None,
) -> Any:
    """The FastAPI app: ``/models`` (HTML page) and ``/api/models`` (the same data as JSON).

    ``user_dependency`` authenticates a request (default: the api-server's ``get_user``, which
    validates the Airflow JWT from the Authorization header or the ``_token`` cookie). Pages answer
    an unauthenticated browser with a redirect to the login page, the JSON endpoint with 401.
    """
    bearer = HTTPBearer(auto_error=False)

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
            if exc.status_code in (401, 403) and wants_page and "text/html" in request.headers.get("accept", ""):
                raise LoginRedirect(_login_url(str(request.url))) from exc
            raise

    # Authentication runs before anything else of a request (query validation included).
    app = FastAPI(title="Grounding models", docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(require_user)])

    @app.exception_handler(LoginRedirect)
    async def to_login(request: Request, exc: LoginRedirect) -> RedirectResponse:
        return RedirectResponse(exc.url, status_code=302)

    def load(model: str | None, page_size: int, page_token: str | None) -> ModelPage:
        model = model or default_model_name()
        if not re.fullmatch(MODEL_NAME_PATTERN, model):
            raise HTTPException(status_code=422, detail=f"model must match {MODEL_NAME_PATTERN}")
        if page_token is not None and not re.fullmatch(r"[A-Za-z0-9+/=_-]{1,2048}", page_token):
            raise HTTPException(status_code=422, detail="page_token is not a token returned by this page")
        try:
            return list_model_versions(tracking_uri or tracking_uri_from_env(), model, page_size=page_size,
                                       page_token=page_token, airflow_base=airflow_base_url())
        except HTTPException:
            raise
        except Exception as exc:  # registry down: say so instead of a bare 500
            raise HTTPException(status_code=502, detail=f"cannot read the MLflow registry: {exc}") from exc

    @app.get("/api/models")
    async def models_json(
        model: str | None = Query(None, max_length=128),
        page_size: int = Query(DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE),
        page_token: str | None = Query(None, max_length=2048),
    ) -> JSONResponse:
        return JSONResponse(load(model, page_size, page_token).to_dict())

    @app.get("/models", response_class=HTMLResponse)
    async def models_html(
        request: Request,
        model: str | None = Query(None, max_length=128),
        page_size: int = Query(DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE),
        page_token: str | None = Query(None, max_length=2048),
    ) -> HTMLResponse:
        page = load(model, page_size, page_token)
        path = request.scope.get("root_path", "") + "/models"
        return HTMLResponse(render_page(page, self_path=path, page_token=page_token),
                            headers={"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                                     "frame-ancestors 'self'", "X-Content-Type-Options": "nosniff"})

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
