"""What both DAG forms share: sections and choice labels on JSON-schema Params, and the Airflow
``Param`` objects built from them (each form module owns its schemas, sections and labels)."""

from __future__ import annotations

from typing import Any, Mapping


def with_sections(
    schemas: Mapping[str, dict[str, Any]],
    sections: Mapping[str, tuple[str, ...]],
    labels: Mapping[str, Mapping[str, str]],
) -> dict[str, dict[str, Any]]:
    """``schemas`` with each field's ``section`` (``Advanced`` when unlisted) and, for the fields in
    ``labels``, a ``values_display`` naming every ``enum`` choice (the value itself when unlabelled)."""
    section_of = {name: section for section, names in sections.items() for name in names}
    out = {}
    for name, schema in schemas.items():
        schema = {"section": section_of.get(name, "Advanced"), **schema}
        if name in labels and "values_display" not in schema:
            schema["values_display"] = {v: labels[name].get(v, v) for v in schema.get("enum", [])}
        out[name] = schema
    return out


def airflow_params(schemas: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """``Param`` objects for ``@dag(params=...)`` (each schema's ``default`` becomes the value)."""
    from airflow.sdk import Param

    params: dict[str, Any] = {}
    for name, schema in schemas.items():
        schema = dict(schema)
        default = schema.pop("default")
        params[name] = Param(default, **schema)
    return params
