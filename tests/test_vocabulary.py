"""Every shared name is defined once, in ``grounding_ops/vocabulary.py``.

The test reads the platform's code (not its tests) token by token and fails on a string literal
equal to one of the vocabulary's names outside the vocabulary module: a second spelling is how
a writer and a reader drift apart.
"""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

from grounding_ops import vocabulary
from grounding_ops.vocabulary import Tag

REPO = Path(__file__).resolve().parents[1]
CODE = [REPO / "grounding_ops", REPO / "dags", REPO / "plugins"]
VOCABULARY = REPO / "grounding_ops" / "vocabulary.py"

# Words that are also ordinary data (a split, an evaluation role, a metric's key in a report, the
# program's own name) are left out: a literal "val" or "acc_at_0_5" is not a second definition.
ORDINARY = {
    "SELECTION_SPLIT",
    "DECISION_SPLIT",
    "CHAMPION_ALIAS",
    "DEFAULT_METRIC",
    "DEFAULT_BUCKET",
    "DEFAULT_DATASET_NAME",
}
NAMES = {
    value for key, value in vars(vocabulary).items() if key.isupper() and isinstance(value, str) and key not in ORDINARY
} | {value for key, value in vars(Tag).items() if key.isupper()}


def _literals(path: Path) -> list[tuple[int, str]]:
    """(line, value) of each plain string literal of ``path`` that is not a docstring."""
    source = path.read_text()
    docstrings = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(body[0].lineno)
    found = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type != tokenize.STRING or token.start[0] in docstrings:
            continue
        try:
            value = ast.literal_eval(token.string)
        except (ValueError, SyntaxError):
            continue  # an f-string: built from names, not a second spelling
        if isinstance(value, str):
            found.append((token.start[0], value))
    return found


def test_the_vocabulary_names_are_not_spelled_out_elsewhere():
    assert len(NAMES) > 30, "the vocabulary lost its names"
    repeated = [
        f"{path.relative_to(REPO)}:{line}: {value!r}"
        for root in CODE
        for path in sorted(root.rglob("*.py"))
        if path != VOCABULARY
        for line, value in _literals(path)
        if value in NAMES
    ]
    assert not repeated, "use grounding_ops.vocabulary instead of:\n" + "\n".join(repeated)


def test_the_grep_finds_a_repeated_name(tmp_path):
    """The check itself can fail: a module that spells out a tag key is found."""
    module = tmp_path / "m.py"
    module.write_text('"""doc: grounding.model_uri is fine here."""\nKEY = "grounding.model_uri"\n')
    assert [value for _, value in _literals(module) if value in NAMES] == ["grounding.model_uri"]


def test_every_metric_has_a_direction():
    assert vocabulary.DEFAULT_METRIC in vocabulary.METRICS
    assert {m.name for m in vocabulary.METRICS.values() if not m.higher_is_better} == {"parse_failure_rate"}


def test_the_training_engines_are_the_vocabulary_s():
    from grounding_ops.training.engines import CpuEngine, VerlEngine

    assert {CpuEngine.name, VerlEngine.name} == set(vocabulary.TRAINING_ENGINES)
    assert set(vocabulary.TRAINING_ENGINE_FOR.values()) == set(vocabulary.TRAINING_ENGINES)
    assert set(vocabulary.GENERATION_ENGINE_FOR.values()) == set(vocabulary.GENERATION_ENGINES)
    assert (
        set(vocabulary.TRAINING_ENGINE_FOR) == set(vocabulary.HARDWARE_CHOICES) == set(vocabulary.GENERATION_ENGINE_FOR)
    )
