"""The Airflow plugin: the "Grounding models" page and the extra links of the grounding_train tasks.

Airflow loads it through the ``airflow.plugins`` entry point of the package (``pyproject.toml``),
so an installed grounding-ops needs no file in the plugins folder.

Mounts a FastAPI app in the api-server under ``/grounding`` (``/grounding/models`` HTML,
``/grounding/api/models`` JSON; authenticated Airflow users only) and adds a "Grounding models"
entry to the UI's navigation. The operator extra links (W&B run, MLflow run, dataset manifest)
are registered so the api-server can show them.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from grounding_ops.pipeline.links import LINK_CLASSES
from grounding_ops.pipeline.models_page import create_app

URL_PREFIX = "/grounding"


class GroundingModelsPlugin(AirflowPlugin):
    name = "grounding_models"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "Grounding models"}]
    external_views = [
        {
            "name": "Grounding models",
            "href": f"{URL_PREFIX}/models",
            "destination": "nav",
            "url_route": "grounding-models",
            "nav_top_level": True,
        }
    ]
    operator_extra_links = [cls() for cls in LINK_CLASSES]
