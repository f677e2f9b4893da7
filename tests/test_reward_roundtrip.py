"""Round trip with the data export: rows written by ``grounding-ops prepare`` plus a perfect
answer in their protocol score 1.0 through VeRL's entry point ``compute_score``."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from grounding_ops.cli import main as cli_main
from grounding_ops.protocols import PROTOCOL_NAMES, build_prompt, get_protocol
from grounding_ops.reward import compute_score


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from grounding_ops.data.synthetic import generate_synthetic

    return generate_synthetic(tmp_path_factory.mktemp("synthetic"), n_images=6, seed=3)


@pytest.mark.parametrize("protocol", PROTOCOL_NAMES)
def test_exported_rows_with_a_perfect_answer_score_one(synthetic, tmp_path, protocol):
    out = tmp_path / "datasets"
    rc = cli_main(
        [
            "prepare",
            str(synthetic.annotations),
            "--images-root",
            str(synthetic.images_root),
            "--output",
            str(out),
            "--protocol",
            protocol,
        ]
    )
    assert rc == 0
    version = json.loads((out / "latest.json").read_text())["version"]
    rows = []
    for split in ("train", "val", "test"):
        rows += pq.read_table(out / version / f"{split}.parquet").to_pylist()
    assert rows
    proto = get_protocol(protocol)
    for row in rows:
        gt = row["reward_model"]["ground_truth"]
        assert gt["protocol"] == protocol
        extra = row["extra_info"]
        # the prompt the model saw is the protocol's prompt
        assert row["prompt"] == build_prompt(extra["phrase"], protocol)

        def score(answer: str, row=row, gt=gt, extra=extra) -> dict:
            return compute_score(row["data_source"], answer, gt, dict(extra))

        exact = proto.format_answer(
            gt["boxes"], gt["image_size"], gt["resized_size"], label=extra["phrase"], precise=True
        )
        result = score(exact)
        assert result["score"] == 1.0 and result["acc"] == 1.0 and result["format_ok"], (exact, gt, result)
        # as the model family writes it (integers on its grid): right to the grid's resolution
        native = proto.format_answer(gt["boxes"], gt["image_size"], gt["resized_size"], label=extra["phrase"])
        result = score(native)
        assert result["acc"] == 1.0 and result["score"] > 0.8, (native, gt, result)
        # and VeRL strips special tokens before scoring: still right
        stripped = native.replace("<|box_start|>", "").replace("<|box_end|>", "")
        stripped = stripped.replace("<|object_ref_start|>", "").replace("<|object_ref_end|>", "")
        assert score(stripped)["acc"] == 1.0
        assert score("")["score"] == 0.0
