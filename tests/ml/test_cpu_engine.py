"""The CPU training engine through the container contract (``run_training``), on a tiny model.

A published synthetic dataset version, the ``tiny-cpu`` preset with a tiny Qwen2-VL built
here: checkpoints, the final Hugging Face folder and ``run.json`` appear in the output; a
second run with a higher ``total_steps`` resumes and trains only the new steps; a run with
nothing left to train fails with a clear message. The S3 variant runs against the local S3
endpoint (moto server on 127.0.0.1).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from grounding_ops.data.synthetic import publish_synthetic_version
from grounding_ops.storage import open_store
from grounding_ops.training import checkpoints as ckpt
from grounding_ops.training.presets import get_preset
from grounding_ops.training.runner import run_training

pytestmark = [pytest.mark.ml, pytest.mark.slow]

STEP_LINE = re.compile(
    r"^step (\d+)/(\d+) reward_mean=([\d.]+) iou=([\d.]+) acc=\S+ format_ok=\S+ ended=\S+ kl=\S+ loss=\S+ "
    r"response_len=\S+ step_time=([\d.]+)s throughput=[\d.]+ seq/s$",
    re.M,
)


def _publish_dataset(base: Path, store_uri: str, s3_client=None) -> str:
    """The synthetic shapes set, exported and published (manifest with checksums) by the real code."""
    uri, counts = publish_synthetic_version(
        base, version="v-train-test", n_images=24, seed=11, val_fraction=0.2, store_uri=store_uri, s3_client=s3_client
    )
    assert counts["train"] >= 8, counts
    return uri


def _spec(total_steps: int, save_freq: int = 2):
    return get_preset("tiny-cpu").with_overrides(
        [f"total_steps={total_steps}", f"save_freq={save_freq}", "sft_warmup_steps=100"]
    )


@pytest.fixture(scope="module")
def local_dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    base = tmp_path_factory.mktemp("dataset")
    return _publish_dataset(base, str(base / "published"))


def _steps(output: str) -> list[tuple[int, int, float, float, float]]:
    return [(int(a), int(b), float(r), float(i), float(t)) for a, b, r, i, t in STEP_LINE.findall(output)]


def test_train_resume_and_refuse_to_retrain(
    local_dataset: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "run"

    # First run: steps 1..4, checkpoints at 2 and 4.
    assert run_training(_spec(4), dataset_uri=local_dataset, output_uri=str(output), engine="cpu") == 0
    logged = capfd.readouterr().out
    steps = _steps(logged)
    assert [s[0] for s in steps] == [1, 2, 3, 4], logged[-3000:]
    assert any(s[2] > 0 for s in steps), "the warm-up should give GRPO non-zero rewards"
    for step in (2, 4):
        folder = output / "checkpoints" / f"global_step_{step}"
        marker = json.loads((folder / ckpt.MARKER_FILE).read_text())
        assert marker["step"] == step and "model.safetensors" in marker["files"]
        assert (folder / "trainer_state.json").is_file() and (folder / "optimizer.pt").is_file()
    final = output / "final"
    assert (final / "config.json").is_file() and (final / "model.safetensors").is_file()
    assert not (final / "optimizer.pt").exists()
    run = json.loads((output / "run.json").read_text())
    assert run["steps_done"] == 4 and run["steps_trained"] == 4 and run["resumed_from_step"] is None
    assert run["engine"] == "cpu" and run["dataset_version"] == "v-train-test"
    assert run["spec"]["total_steps"] == 4 and len(run["checkpoints"]) == 2
    assert set(run["final_metrics"]) >= {"reward_mean", "iou", "seconds_per_step"}
    assert run["seconds_per_step"] > 0

    from transformers import AutoModelForImageTextToText, AutoProcessor

    AutoProcessor.from_pretrained(final)
    AutoModelForImageTextToText.from_pretrained(final)
    first_step4 = (output / "checkpoints" / "global_step_4" / "model.safetensors").read_bytes()

    # Second run, higher target: resumes from step 4 and trains 5..6 only.
    assert run_training(_spec(6), dataset_uri=local_dataset, output_uri=str(output), engine="cpu") == 0
    logged = capfd.readouterr().out
    assert "resuming from" in logged and "global_step_4" in logged
    assert [s[0] for s in _steps(logged)] == [5, 6], logged[-3000:]
    assert "warm-up step" not in logged  # no KL reference needed, so no warm-up on resume
    assert (output / "checkpoints" / "global_step_4" / "model.safetensors").read_bytes() == first_step4
    run = json.loads((output / "run.json").read_text())
    assert run["steps_done"] == 6 and run["steps_trained"] == 2 and run["resumed_from_step"] == 4
    assert [c.rsplit("/", 1)[-1] for c in run["checkpoints"]] == ["global_step_2", "global_step_4", "global_step_6"]

    # The resume continued from the checkpoint's weights, optimizer and RNG: the result is
    # bit-identical to training 6 steps straight.
    straight = tmp_path / "straight"
    assert run_training(_spec(6, save_freq=6), dataset_uri=local_dataset, output_uri=str(straight), engine="cpu") == 0
    capfd.readouterr()
    resumed = (output / "final" / "model.safetensors").read_bytes()
    assert resumed == (straight / "final" / "model.safetensors").read_bytes()

    # Third run, same target: nothing to train is an error, not a success.
    before = (output / "run.json").read_bytes()
    assert run_training(_spec(6), dataset_uri=local_dataset, output_uri=str(output), engine="cpu") == 2
    err = capfd.readouterr().err
    assert "nothing to train" in err and "already at step 6" in err and "raise total_steps" in err
    assert (output / "run.json").read_bytes() == before


def test_interrupted_run_without_run_json_is_finished_not_retrained(
    local_dataset: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "run"
    assert run_training(_spec(2, save_freq=1), dataset_uri=local_dataset, output_uri=str(output), engine="cpu") == 0
    capfd.readouterr()
    # The previous run "died" after its last checkpoint: no final model, no run.json.
    (output / "run.json").unlink()
    for path in (output / "final").iterdir():
        path.unlink()
    assert run_training(_spec(2, save_freq=1), dataset_uri=local_dataset, output_uri=str(output), engine="cpu") == 0
    logged = capfd.readouterr().out
    assert "no steps left to train" in logged and not _steps(logged)
    run = json.loads((output / "run.json").read_text())
    assert run["steps_done"] == 2 and run["steps_trained"] == 0
    assert (output / "final" / "model.safetensors").is_file()


def test_bad_dataset_uri_fails_with_a_clear_message(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    code = run_training(_spec(2), dataset_uri=str(tmp_path / "nothing"), output_uri=str(tmp_path / "out"), engine="cpu")
    assert code == 2
    assert "no dataset at" in capfd.readouterr().err
    assert not (tmp_path / "out" / "run.json").exists()


def test_train_and_resume_against_s3(s3_env, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    client = s3_env.client()
    dataset_uri = _publish_dataset(tmp_path / "dataset", s3_env.uri("datasets", "train-test"), client)
    output_uri = s3_env.uri("runs", "cpu-s3")
    assert (
        run_training(
            _spec(2, save_freq=1), dataset_uri=dataset_uri, output_uri=output_uri, engine="cpu", s3_client=client
        )
        == 0
    )
    capfd.readouterr()
    out = open_store(output_uri, s3_client=client)
    assert ckpt.remote_complete_steps(out) == [1, 2]
    assert out.exists("final/model.safetensors") and out.exists("final/tokenizer.json")

    # Resume from S3 alone (no local state is shared between runs).
    assert (
        run_training(
            _spec(3, save_freq=1), dataset_uri=dataset_uri, output_uri=output_uri, engine="cpu", s3_client=client
        )
        == 0
    )
    logged = capfd.readouterr().out
    assert [s[0] for s in _steps(logged)] == [3]
    run = json.loads(out.get_bytes("run.json"))
    assert run["steps_done"] == 3 and run["resumed_from_step"] == 2
    assert run["checkpoints"][-1] == f"{output_uri}/checkpoints/global_step_3"
    assert ckpt.remote_complete_steps(out) == [1, 2, 3]
