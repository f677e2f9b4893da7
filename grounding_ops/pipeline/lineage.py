"""Lineage of both DAGs: Airflow Assets and OpenLineage datasets for every task.

A lineage reference is a URI (``s3://bucket/key``, a local path), an MLflow registered model version
(:func:`mlflow_model_ref`), or either with facets (:func:`dataset_ref`: dataset version, schema,
rows and bytes written, data-quality assertions); all of them are plain JSON so they travel in XCom.
Operators turn them into OpenLineage datasets in ``get_openlineage_facets_on_complete``; Python
tasks made with :func:`lineage_task` report them by returning a dict with a
``"lineage": {"inputs": [...], "outputs": [...]}`` entry.

Identities (so the graph connects from the annotations file to the registered model version):

- a dataset version is ``s3://<bucket>/datasets/<name>/<version>`` (namespace ``s3://<bucket>``,
  OpenLineage's S3 naming), written by ``export`` with its parquet files
  (``.../<version>/train.parquet`` ...) and its published ``quarantine.jsonl``, read by ``train``
  (the version, ``train.parquet``, ``val.parquet``) and ``evaluate`` (the version and its split);
- a registered model version is ``models/<name>/versions/<n>`` in the namespace
  ``mlflow://registry``, the namespace of the model's Airflow Asset ``mlflow://registry/models/<name>``
  (never the tracking server's address, which carries a port and may carry credentials).

The OpenLineage provider sends the events with the transport configured in
``AIRFLOW__OPENLINEAGE__TRANSPORT`` (a file by default in the local services, HTTP when set).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence
from urllib.parse import urlparse

from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk.bases.decorator import DecoratedOperator

LineageRef = str | Mapping[str, Any]


# ----------------------------------------------------------------------------- references and facets


def dataset_ref(
    uri: str,
    *,
    version: str | None = None,
    schema: Sequence[Mapping[str, Any]] | None = None,
    rows: int | None = None,
    size: int | None = None,
    files: int | None = None,
    assertions: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """A reference with facets (JSON, for XCom); :func:`to_ol_dataset` turns it into a dataset."""
    facets: dict[str, Any] = {}
    if version:
        facets["version"] = str(version)
    if schema:
        facets["schema"] = [dict(f) for f in schema]
    if rows is not None or size is not None:
        facets["statistics"] = {"rows": rows, "size": size, "files": files}
    if assertions:
        facets["assertions"] = [dict(a) for a in assertions]
    return {"uri": uri, "facets": facets}


def arrow_schema_fields(schema: Any) -> list[dict[str, Any]]:
    """An Arrow schema as OpenLineage schema fields (nested structs and lists of structs kept)."""
    import pyarrow as pa

    def field(f: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"name": f.name, "type": str(f.type)}
        inner = f.type
        while pa.types.is_list(inner) or pa.types.is_large_list(inner):
            inner = inner.value_type
        if pa.types.is_struct(inner):
            out["type"] = "struct" if inner is f.type else "list<struct>"
            out["fields"] = [field(inner.field(i)) for i in range(inner.num_fields)]
        return out

    return [field(f) for f in schema]


def export_schema_fields() -> list[dict[str, Any]]:
    """The schema of the parquet files ``export`` writes."""
    from grounding_ops.data.export import verl_schema

    return arrow_schema_fields(verl_schema())


def gx_assertions(results_dir: str | Path) -> list[dict[str, Any]]:
    """Data-quality assertions from the Great Expectations results of ``validate`` (all batches).

    One assertion per expectation (and column): successful only when it held on every batch; the
    unexpected row count and the row count are kept as ``actual``/``expected``.
    """
    merged: dict[tuple[str, str | None], dict[str, Any]] = {}
    for path in sorted(Path(results_dir).glob("*.json")):
        document = json.loads(path.read_text(encoding="utf-8"))
        for item in document.get("results") or []:
            config = item.get("expectation_config") or {}
            kwargs = config.get("kwargs") or {}
            column = kwargs.get("column")
            name = (config.get("meta") or {}).get("reason") or config.get("type") or "expectation"
            key = (str(config.get("type") or name), column)
            result = item.get("result") or {}
            entry = merged.setdefault(
                key,
                {"assertion": key[0], "name": str(name), "column": column, "success": True, "unexpected": 0, "rows": 0},
            )
            entry["success"] = entry["success"] and bool(item.get("success"))
            entry["unexpected"] += int(result.get("unexpected_count") or 0)
            entry["rows"] += int(result.get("element_count") or 0)
    return [merged[k] for k in sorted(merged, key=lambda k: (k[0], k[1] or ""))]


def _naming(uri: str) -> Any:
    """OpenLineage's dataset naming for a URI (its S3 and local file system conventions)."""
    from openlineage.client.naming.dataset import GCS, S3, LocalFileSystem

    parsed = urlparse(uri)
    key = parsed.path.strip("/") or "/"
    if parsed.scheme == "s3" and parsed.netloc:
        return S3(bucket_name=parsed.netloc, object_key=key)
    if parsed.scheme in ("gs", "gcs") and parsed.netloc:
        return GCS(bucket_name=parsed.netloc, object_key=key)
    if parsed.scheme in ("", "file"):
        return LocalFileSystem(path=parsed.path if parsed.scheme else uri)
    return None


def _facets(facets: Mapping[str, Any], direction: str) -> tuple[dict[str, Any], dict[str, Any]]:
    from openlineage.client.facet_v2 import (
        data_quality_assertions_dataset,
        dataset_version_dataset,
        output_statistics_output_dataset,
        schema_dataset,
    )

    def fields(items: Sequence[Mapping[str, Any]]) -> list[Any]:
        return [
            schema_dataset.SchemaDatasetFacetFields(
                name=str(f["name"]), type=f.get("type"), fields=fields(f.get("fields") or [])
            )
            for f in items
        ]

    dataset: dict[str, Any] = {}
    special: dict[str, Any] = {}
    if facets.get("version"):
        dataset["version"] = dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion=facets["version"])
    if facets.get("schema"):
        dataset["schema"] = schema_dataset.SchemaDatasetFacet(fields=fields(facets["schema"]))
    stats = facets.get("statistics")
    if stats and direction == "output":
        special["outputStatistics"] = output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
            rowCount=stats.get("rows"), size=stats.get("size"), fileCount=stats.get("files")
        )
    if facets.get("assertions") and direction == "input":
        special["dataQualityAssertions"] = data_quality_assertions_dataset.DataQualityAssertionsDatasetFacet(
            assertions=[
                data_quality_assertions_dataset.Assertion(
                    assertion=str(a["assertion"]),
                    success=bool(a["success"]),
                    column=a.get("column"),
                    name=a.get("name"),
                    actual=str(a.get("unexpected", "")),
                    expected=str(a.get("rows", "")),
                )
                for a in facets["assertions"]
            ]
        )
    return dataset, special


def to_ol_dataset(ref: LineageRef, direction: str = "input") -> Any:
    """An OpenLineage input or output dataset for a URI, a ``{"namespace", "name"}`` or a :func:`dataset_ref`."""
    from openlineage.client.event_v2 import InputDataset, OutputDataset

    facets: Mapping[str, Any] = {}
    if isinstance(ref, Mapping) and "uri" in ref:
        facets = ref.get("facets") or {}
        ref = str(ref["uri"])
    if isinstance(ref, Mapping):
        namespace, name = str(ref["namespace"]), str(ref["name"])
    else:
        text = str(ref)
        naming = _naming(text)
        if naming is not None:
            namespace, name = naming.get_namespace(), naming.get_name()
        else:
            parsed = urlparse(text)
            namespace, name = f"{parsed.scheme}://{parsed.netloc}", parsed.path.strip("/") or "/"
    dataset_facets, special = _facets(facets, direction)
    if direction == "output":
        return OutputDataset(namespace=namespace, name=name, facets=dataset_facets, outputFacets=special)
    return InputDataset(namespace=namespace, name=name, facets=dataset_facets, inputFacets=special)


def dataset_split_refs(version_uri: str, splits: Iterable[str], version: str | None = None) -> list[dict[str, Any]]:
    """The parquet files of a dataset version a task reads (``<version>/<split>.parquet``)."""
    return [dataset_ref(f"{version_uri.rstrip('/')}/{split}.parquet", version=version) for split in splits]


def operator_lineage(inputs: Iterable[LineageRef], outputs: Iterable[LineageRef]) -> Any:
    from airflow.providers.openlineage.extractors import OperatorLineage

    return OperatorLineage(
        inputs=[to_ol_dataset(r, "input") for r in inputs if r],
        outputs=[to_ol_dataset(r, "output") for r in outputs if r],
    )


def lineage_of(result: Any) -> tuple[list[LineageRef], list[LineageRef]]:
    """Inputs/outputs from a task result's ``"lineage"`` entry (for a list: merged over its items)."""
    items = result if isinstance(result, list) else [result]
    inputs: list[LineageRef] = []
    outputs: list[LineageRef] = []
    for item in items:
        if isinstance(item, Mapping) and isinstance(item.get("lineage"), Mapping):
            for ref in item["lineage"].get("inputs") or []:
                if ref not in inputs:
                    inputs.append(ref)
            for ref in item["lineage"].get("outputs") or []:
                if ref not in outputs:
                    outputs.append(ref)
    return inputs, outputs


class LineagePythonOperator(DecoratedOperator, PythonOperator):
    """``@task`` whose returned ``"lineage"`` entry becomes the task's OpenLineage inputs/outputs,
    and whose data errors fail at once (:mod:`grounding_ops.pipeline.retry_policy`).

    Built, like the standard provider's own ``@task`` operator, from the public ``DecoratedOperator``
    and ``PythonOperator``.
    """

    template_fields: Sequence[str] = ("templates_dict", "op_args", "op_kwargs")
    template_fields_renderers = {"templates_dict": "json", "op_args": "py", "op_kwargs": "py"}
    custom_operator_name = "@task"

    def __init__(self, *, python_callable: Callable, op_args: Any, op_kwargs: Any, **kwargs: Any) -> None:
        super().__init__(
            kwargs_to_upstream={"python_callable": python_callable, "op_args": op_args, "op_kwargs": op_kwargs},
            python_callable=python_callable,
            op_args=op_args,
            op_kwargs=op_kwargs,
            **kwargs,
        )

    def execute(self, context: Any) -> Any:
        from grounding_ops.pipeline.retry_policy import fail_fast

        self.lineage_inputs: list[LineageRef] = []
        self.lineage_outputs: list[LineageRef] = []
        try:
            result = super().execute(context)
        except Exception as exc:  # data errors fail at once; transient S3/MLflow errors are retried
            raised = fail_fast(exc)
            if raised is exc:
                raise
            raise raised from exc
        self.lineage_inputs, self.lineage_outputs = lineage_of(result)
        return result

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        return operator_lineage(getattr(self, "lineage_inputs", []), getattr(self, "lineage_outputs", []))


def lineage_task(python_callable: Callable | None = None, **kwargs: Any) -> Any:
    """Like ``@task``, with OpenLineage inputs/outputs taken from the returned ``"lineage"``."""
    from airflow.sdk.bases.decorator import task_decorator_factory

    return task_decorator_factory(
        python_callable=python_callable,
        decorated_operator_class=LineagePythonOperator,
        **kwargs,
    )
