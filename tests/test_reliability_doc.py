"""docs/reliability.md is generated from the corpus and names only tests that exist."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _script():
    spec = importlib.util.spec_from_file_location("reliability_table", REPO / "scripts" / "reliability_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reliability_doc_is_up_to_date() -> None:
    script = _script()
    assert (REPO / "docs" / "reliability.md").read_text() == script.render(), "run: python scripts/reliability_table.py"


def test_every_test_named_in_the_doc_exists() -> None:
    missing = []
    for ref in _script().referenced_tests():
        path, _, name = ref.partition("::")
        tree = ast.parse((REPO / path).read_text())
        names = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
        if name not in names:
            missing.append(ref)
    assert missing == []


def test_every_corpus_kind_has_a_row() -> None:
    text = (REPO / "docs" / "reliability.md").read_text()
    for kind in (
        "annotation (COCO)",
        "annotation (VinDr CSV)",
        "annotation (MS-CXR)",
        "image",
        "Params",
        "model response",
        "dataset manifest",
    ):
        assert kind in text
