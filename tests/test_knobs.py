"""Each training knob is defined once, on its TrainingSpec field: the form and the CLI read it there."""

from __future__ import annotations

import subprocess
import sys

from grounding_ops.pipeline.train_params import SPEC_KEYS, param_schemas
from grounding_ops.training.spec import TrainingSpec, knobs


def test_the_form_fields_of_spec_knobs_come_from_the_spec():
    schemas = param_schemas()
    found = knobs()
    assert set(SPEC_KEYS.values()) <= set(found), "a form field maps to a spec field that is not a knob"
    for param, spec_field in SPEC_KEYS.items():
        k, schema = found[spec_field], schemas[param]
        assert (schema["minimum"], schema["maximum"]) == (k.minimum, k.maximum), param
        assert schema["title"] == k.title and schema["description"].startswith(k.help), param
        assert schema["type"] == ["null", k.kind], param


def test_knob_defaults_lie_within_their_bounds():
    spec = TrainingSpec(model="m")
    for k in knobs().values():
        value = getattr(spec, k.name)
        assert value is None or k.minimum <= value <= k.maximum, k.name


def test_train_help_lists_every_knob_with_its_bounds():
    out = subprocess.run(
        [sys.executable, "-m", "grounding_ops", "train", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for k in knobs().values():
        assert f"{k.name} ({k.minimum:g}..{k.maximum:g}): {k.help}" in out
