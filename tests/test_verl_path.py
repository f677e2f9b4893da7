"""The VeRL GPU path's refusals and settings that need no ML stack: the spec, the pre-flight
dataset check, verl-shaped checkpoint folders (rotated, partial) in the uploader, the export's
resize per model family, the GPU containers' devices, pool, shared memory and image pins."""

from __future__ import annotations

import dataclasses
import io
import json
import re
from pathlib import Path

import pytest

from grounding_ops.storage import open_store
from grounding_ops.testing import write_verl_step
from grounding_ops.training import checkpoints as ckpt
from grounding_ops.training.presets import PRESET_NAMES, get_preset

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- spec


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["kl_type=full"], "kl_type 'full' is unknown"),
        (["logger=console,mlflow"], "GPU image has no mlflow"),
        (["nnodes=2", "train_batch_size=256", "ppo_mini_batch_size=64"], "needs shared_dir"),
        (["model_family=qwen3-vl"], "qwen3-vl answers in a 0-1000 grid but protocol qwen2.5-vl asks for pixels"),
        (["protocol=qwen2-vl"], "qwen2.5-vl answers in pixels of the resized image but protocol qwen2-vl"),
    ],
)
def test_verl_refuses_what_would_crash_or_train_the_wrong_frame(change: list[str], message: str) -> None:
    spec = get_preset("qwen2.5-vl-7b").with_overrides(change)
    with pytest.raises(ValueError, match=message):
        spec.validate(engine="verl")


def test_the_spec_says_full_fine_tuning_trains_the_vision_tower() -> None:
    assert get_preset("qwen2.5-vl-7b").trains_vision_tower is True
    assert get_preset("qwen2.5-vl-7b-lora").trains_vision_tower is False
    for name in PRESET_NAMES:
        get_preset(name).validate()  # every preset still validates on its engine


# --------------------------------------------------------------------------- pre-flight


def _parquet(path: Path, sizes: list[tuple[int, int]], protocol: str = "qwen2.5-vl") -> Path:
    from grounding_ops.data.export import RowGroupWriter, build_row
    from grounding_ops.data.vision import smart_resize
    from grounding_ops.protocols import build_prompt

    with RowGroupWriter(path) as writer:
        for index, (w, h) in enumerate(sizes):
            writer.add(
                build_row(
                    record_id=f"r{index}",
                    source="s",
                    phrase="the red square",
                    boxes=[[1, 1, 5, 5]],
                    image_bytes=b"x",
                    image_size=(w, h),
                    resized_size=smart_resize(w, h),
                    prompt=build_prompt("the red square", protocol),
                    protocol=protocol,
                    split="train",
                    index=index,
                    min_pixels=3136,
                    max_pixels=1003520,
                )
            )
    return path


def _manifest(**settings) -> dict:
    return {
        "protocol": "qwen2.5-vl",
        "settings": {"protocol": "qwen2.5-vl", "min_pixels": 3136, "max_pixels": 1003520, **settings},
    }


def test_preflight_refuses_a_train_split_smaller_than_a_batch_after_the_filter(tmp_path: Path) -> None:
    from grounding_ops.training.verl_preflight import DatasetMismatch, check_dataset

    spec = get_preset("qwen2.5-vl-3b").with_overrides(
        ["train_batch_size=8", "ppo_mini_batch_size=8", "gpus_per_node=1"]
    )
    small, big = (640, 480), (1280, 960)  # 391 and 1265 visual tokens
    train = _parquet(tmp_path / "train.parquet", [small] * 6 + [big] * 4)
    assert check_dataset(spec, _manifest(), train, None).steps(spec) == spec.total_epochs * 1
    tight = dataclasses.replace(spec, max_prompt_length=1024)
    with pytest.raises(
        DatasetMismatch,
        match=r"only 6 of 10 train rows fit max_prompt_length=1024 \(4 would be "
        r"filtered as overlong\), fewer than one batch \(train_batch_size=8\)",
    ):
        check_dataset(tight, _manifest(), train, None)
    val = _parquet(tmp_path / "val.parquet", [big] * 2)
    with pytest.raises(DatasetMismatch, match="none of the 2 val rows fits max_prompt_length=1024"):
        check_dataset(dataclasses.replace(tight, train_batch_size=4, ppo_mini_batch_size=4), _manifest(), train, val)


def test_preflight_takes_pixel_bounds_protocol_and_factor_from_the_manifest(tmp_path: Path) -> None:
    from grounding_ops.training.verl_preflight import DatasetMismatch, check_dataset

    train = _parquet(tmp_path / "train.parquet", [(1280, 960)] * 130)
    lora = get_preset("qwen2.5-vl-7b-lora")  # max_pixels=802816 on data exported with 1003520
    with pytest.raises(
        DatasetMismatch,
        match="exported with min_pixels=3136, max_pixels=1003520 but the spec says min_pixels=3136, max_pixels=802816",
    ):
        check_dataset(lora, _manifest(), train, None)
    spec = get_preset("qwen2.5-vl-3b")
    with pytest.raises(DatasetMismatch, match="ask for protocol qwen2-vl"):
        check_dataset(spec, {**_manifest(), "protocol": "qwen2-vl"}, train, None)
    qwen3 = dataclasses.replace(spec, model_family="qwen3-vl", protocol="qwen3-vl")
    with pytest.raises(DatasetMismatch, match=r"resized for qwen2.5-vl \(factor 28\)"):
        check_dataset(
            qwen3, {"protocol": "qwen3-vl", "settings": {"min_pixels": 3136, "max_pixels": 1003520}}, train, None
        )


# --------------------------------------------------------------------------- checkpoints


def test_uploader_skips_rotated_and_partial_verl_steps(tmp_path: Path) -> None:
    from grounding_ops.training.verl_engine import actor_has_model

    local = tmp_path / "ckpt"
    for step in (1, 2, 3):
        write_verl_step(local, step)
    write_verl_step(local, 4, world_size=2, ranks=(0,))  # the other node's rank wrote to its own disk
    for shard in (local / "global_step_1" / "actor").glob("model_*"):  # verl's rotation: data.pt stays
        shard.unlink()
    assert ckpt.local_complete_steps(local) == [1, 2, 3, 4]  # the tracker alone would count all of them
    assert ckpt.local_complete_steps(local, actor_has_model) == [2, 3]

    store = open_store(str(tmp_path / "out"))
    logged: list[str] = []
    merged: list[int] = []

    def rotate_while_uploading(step: int, folder: Path) -> None:
        merged.append(step)
        if step == 2:  # the engine rotates step 2 away while it is being prepared
            for shard in (folder / "actor").glob("model_*"):
                shard.unlink()
            raise OSError(f"{folder}/actor/model_world_size_1_rank_0.pt vanished")

    uploader = ckpt.CheckpointUploader(
        store, local, log=logged.append, is_complete=actor_has_model, before_upload=rotate_while_uploading, retries=2
    )
    uploader.sync_once()
    assert uploader.finish() == {3: ckpt.checkpoint_uri(store, 3)}
    assert ckpt.remote_complete_steps(store) == [3] and merged == [2, 3]
    assert any("step 2 was rotated away" in line for line in logged)


def test_latest_verl_checkpoint_ignores_a_newer_rotated_or_partial_step(tmp_path: Path) -> None:
    from grounding_ops.training.verl_engine import actor_has_model, incomplete_steps

    write_verl_step(tmp_path, 2)
    write_verl_step(tmp_path, 4, world_size=2, ranks=(0,))
    assert ckpt.latest_local_checkpoint(tmp_path, actor_has_model) == (2, tmp_path / "global_step_2")
    assert "global_step_4 lacks actor/model_world_size_2_rank_1.pt" in incomplete_steps(tmp_path)
    assert "shared_dir" in incomplete_steps(tmp_path)


# --------------------------------------------------------------------------- export


@pytest.mark.parametrize(
    ("family", "protocol", "factor"), [("qwen2.5-vl", "qwen2.5-vl", 28), ("qwen3-vl", "qwen3-vl", 32)]
)
def test_export_resizes_with_the_family_factor_and_stores_the_resized_image(
    family: str, protocol: str, factor: int, tmp_path: Path
) -> None:
    import pyarrow.parquet as pq
    from PIL import Image

    from grounding_ops.data.images import ImageResolver
    from grounding_ops.data.prepare import VALID, PrepareSettings, valid_row, write_parquet
    from grounding_ops.data.readers import read_records
    from grounding_ops.data.synthetic import generate_synthetic

    data = generate_synthetic(tmp_path / "syn", n_images=4, seed=2, min_size=200, max_size=400)
    settings = PrepareSettings(
        protocol=protocol, model_family=family, val_fraction=0.0, min_pixels=4096, max_pixels=40000
    )
    settings.check()
    resolver = ImageResolver(data.images_root)
    (tmp_path / "work").mkdir()
    (tmp_path / "export").mkdir()
    with open(tmp_path / "work" / VALID, "w") as handle:
        for record in read_records(data.annotations):
            handle.write(json.dumps(valid_row(record, record.boxes, resolver.check(record.image, 10**8))) + "\n")
    write_parquet(tmp_path / "work", tmp_path / "export", settings, resolver)
    rows = pq.read_table(tmp_path / "export" / "train.parquet").to_pylist()
    assert rows
    for row in rows:
        truth = row["reward_model"]["ground_truth"]
        assert all(v % factor == 0 for v in truth["resized_size"]) and truth["image_size"] != truth["resized_size"]
        assert list(Image.open(io.BytesIO(row["images"][0]["bytes"])).size) == truth["resized_size"]


def test_prepare_refuses_a_family_protocol_pair_whose_frames_disagree() -> None:
    from grounding_ops.data.prepare import PrepareError, PrepareSettings

    with pytest.raises(PrepareError, match="--model-family qwen3-vl with --protocol qwen2.5-vl"):
        PrepareSettings(protocol="qwen2.5-vl", model_family="qwen3-vl").check()
    PrepareSettings(protocol="click-xywh", model_family="qwen3-vl").check()  # a generic protocol is fine


# --------------------------------------------------------------------------- containers


def test_gpu_containers_get_their_gpus_not_all_of_them() -> None:
    from grounding_ops.pipeline.docker_tasks import GPU_SHM_SIZE, docker_kwargs
    from grounding_ops.pipeline.plans import GPU_WORK_VOLUME, training_gpus

    with pytest.raises(ValueError, match="gpus >= 1"):
        docker_kwargs(engine="gpu", command=["x"], container_name="c", private_environment={})
    assert training_gpus({"preset": "qwen2.5-vl-7b-lora"}) == 2
    assert training_gpus({"preset": "qwen2.5-vl-7b", "gpus_per_node": 4}) == 4
    train = docker_kwargs(
        engine="gpu", command=["train"], container_name="c", private_environment={}, gpus=2, work_volume=GPU_WORK_VOLUME
    )
    assert train["device_requests"][0]["Count"] == 2 and train["shm_size"] == GPU_SHM_SIZE
    assert [(m["Target"], m["Source"], m["Type"]) for m in train["mounts"]] == [("/work", GPU_WORK_VOLUME, "volume")]
    with pytest.raises(ValueError, match="not a Docker volume name"):
        docker_kwargs(
            engine="gpu", command=["x"], container_name="c", private_environment={}, gpus=1, work_volume="/var/run"
        )


def test_training_and_evaluation_plans_ask_for_their_gpus() -> None:
    from grounding_ops.pipeline.task_records import EvaluationCandidate, TrainingSummary
    from grounding_ops.pipeline.datasets import DatasetRef
    from grounding_ops.pipeline.plans import plan_evaluations, plan_training

    params = {"engine": "gpu", "preset": "qwen2.5-vl-7b", "gpus_per_node": 4}
    dataset = DatasetRef(uri="s3://b/d/v1", version="v1", manifest_uri="s3://b/d/v1/manifest.json", source="param")
    plan = plan_training(params, dataset, output_uri="s3://b/r/1", fingerprint="f", airflow_run="r")
    assert plan.gpus == 4 and plan.work_volume
    training = TrainingSummary(
        output_uri="s3://b/r/1",
        dataset_version="v1",
        dataset_uri="s3://b/d/v1",
        steps_done=2,
        engine="gpu",
        fingerprint="f",
    )
    candidates = [
        EvaluationCandidate(f"global_step_{i}", f"s3://b/r/1/checkpoints/global_step_{i}/huggingface", i, "candidate")
        for i in (1, 2)
    ]
    plans = plan_evaluations(params, training, candidates, run_uri="s3://b/r/1", airflow_run="r")
    assert [p.gpus for p in plans] == [1, 1] and not any("work_volume" in p.to_dict() for p in plans)


def test_the_dag_runs_trainer_containers_in_the_gpu_pool_one_evaluation_at_a_time() -> None:
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(str(REPO / "dags" / "grounding_train.py")).dags["grounding_train"]
    tasks = {t.task_id: t for t in dag.tasks}
    assert {tasks[t].pool for t in ("train", "evaluate", "evaluate_test")} == {"grounding_gpu"}
    assert tasks["evaluate"].max_active_tis_per_dagrun == tasks["evaluate_test"].max_active_tis_per_dagrun == 1
    services = (REPO / "grounding_ops" / "services.py").read_text()
    assert re.search(r'"pools",\s*"set",\s*gpu_pool\(\),\s*str\(gpu_pool_slots\(\)\)', services)


def test_gpu_image_is_pinned_and_its_example_uses_the_operators_shared_memory() -> None:
    from grounding_ops.pipeline.docker_tasks import GPU_SHM_GB

    dockerfile = (REPO / "docker" / "trainer" / "Dockerfile.verl").read_text()
    run_lines = [line for line in dockerfile.splitlines() if "docker run" in line]
    assert run_lines and all(f"--shm-size {GPU_SHM_GB}g" in line and "--ipc" not in line for line in run_lines)
    assert "-c /tmp/constraints-verl.txt" in dockerfile and "FLASH_ATTN_WHEEL" in dockerfile
    pins = dict(
        line.split("==", 1)
        for line in (REPO / "docker" / "trainer" / "constraints-verl.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    for name, version in {
        "verl": "0.9.1",
        "torch": "2.11.0",
        "vllm": "0.24.0",
        "transformers": "5.9.0",
        "flash-attn": "2.8.3",
        "qwen-vl-utils": "0.0.14",
        "TransferQueue": "0.1.11",
    }.items():
        assert pins.get(name) == version, name
    for requirements in ("requirements.txt", "constraints.txt"):  # the CPU trainer env imports verl's V1 trainer
        text = (REPO / "docker" / "trainer" / requirements).read_text()
        assert re.search(r"^TransferQueue==0\.1\.11$", text, re.M), requirements
