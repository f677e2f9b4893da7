"""Checkpoint sync between a trainer's local folder and the run output (local folder and S3).

A checkpoint exists in the output only once its completion marker is written, after every
file; a folder still being written locally (tracker file not yet advanced) is never uploaded.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from grounding_ops.storage import StorageError, open_store
from grounding_ops.training import checkpoints as ckpt


def _write_checkpoint(local: Path, step: int, *, track: bool = True, payload: bytes = b"weights") -> Path:
    folder = local / f"global_step_{step}"
    (folder / "actor").mkdir(parents=True, exist_ok=True)
    (folder / "actor" / "model.pt").write_bytes(payload * step)
    (folder / "data.pt").write_bytes(b"loader state")
    if track:
        ckpt.write_tracker(local, step)
    return folder


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "local":
        return open_store(tmp_path / "output")
    s3 = request.getfixturevalue("s3_service")
    return open_store(s3.uri("runs", tmp_path.name), s3_client=s3.client())


def test_only_tracked_local_folders_are_complete(tmp_path: Path) -> None:
    local = tmp_path / "ckpt"
    _write_checkpoint(local, 2)
    _write_checkpoint(local, 4, track=False)  # still being written
    (local / "global_step_x").mkdir()
    assert ckpt.local_complete_steps(local) == [2]
    assert ckpt.latest_local_checkpoint(local) == (2, local / "global_step_2")
    ckpt.write_tracker(local, 4)
    assert ckpt.local_complete_steps(local) == [2, 4]
    assert ckpt.local_complete_steps(tmp_path / "missing") == []


def test_upload_download_roundtrip(store, tmp_path: Path) -> None:
    local = tmp_path / "ckpt"
    _write_checkpoint(local, 3)
    uri = ckpt.upload_checkpoint(store, local, 3)
    assert uri.endswith("checkpoints/global_step_3")
    marker = json.loads(store.get_bytes(f"checkpoints/global_step_3/{ckpt.MARKER_FILE}"))
    assert {rel: entry["size"] for rel, entry in marker["files"].items()} == {"actor/model.pt": 21, "data.pt": 12}
    assert (
        marker["files"]["data.pt"]["sha256"]
        == hashlib.sha256((local / "global_step_3" / "data.pt").read_bytes()).hexdigest()
    )
    assert ckpt.remote_complete_steps(store) == [3]

    fresh = tmp_path / "fresh"
    folder = ckpt.download_checkpoint(store, 3, fresh)
    assert (folder / "actor" / "model.pt").read_bytes() == b"weights" * 3
    assert ckpt.read_tracker(fresh) == 3  # VeRL's resume_mode=auto and the CPU engine read this
    assert ckpt.latest_local_checkpoint(fresh) == (3, folder)


def test_partial_upload_is_not_a_checkpoint(store, tmp_path: Path) -> None:
    local = tmp_path / "ckpt"
    _write_checkpoint(local, 1)
    _write_checkpoint(local, 2)
    ckpt.upload_checkpoint(store, local, 1)
    # An upload of step 2 cut short: files but no marker.
    store.upload_file("checkpoints/global_step_2/actor/model.pt", local / "global_step_2" / "actor" / "model.pt")
    assert ckpt.remote_complete_steps(store) == [1]
    with pytest.raises(StorageError, match="completion marker"):
        ckpt.download_checkpoint(store, 2, tmp_path / "fresh")


def test_damaged_checkpoint_is_refused(store, tmp_path: Path) -> None:
    local = tmp_path / "ckpt"
    _write_checkpoint(local, 5)
    ckpt.upload_checkpoint(store, local, 5)
    store.put_bytes("checkpoints/global_step_5/actor/model.pt", b"truncated")
    with pytest.raises(StorageError, match="damaged"):
        ckpt.download_checkpoint(store, 5, tmp_path / "fresh")


def test_same_size_tampering_is_caught_by_the_recorded_checksum(store, tmp_path: Path) -> None:
    local = tmp_path / "ckpt"
    _write_checkpoint(local, 5)
    ckpt.upload_checkpoint(store, local, 5)
    original = store.get_bytes("checkpoints/global_step_5/data.pt")
    store.put_bytes("checkpoints/global_step_5/data.pt", b"X" * len(original))  # a forged pickle, same size
    with pytest.raises(StorageError, match="changed after upload"):
        ckpt.download_checkpoint(store, 5, tmp_path / "fresh")
    assert not (tmp_path / "fresh" / "global_step_5" / "data.pt").exists()


def test_a_marker_without_checksums_is_refused_before_resume(store, tmp_path: Path) -> None:
    store.put_bytes("checkpoints/global_step_1/data.pt", b"pickle")
    store.put_bytes(
        f"checkpoints/global_step_1/{ckpt.MARKER_FILE}", json.dumps({"step": 1, "files": {"data.pt": 6}}).encode()
    )
    with pytest.raises(StorageError, match="records no sha256"):
        ckpt.download_checkpoint(store, 1, tmp_path / "fresh")


def test_uploader_uploads_in_the_background_once_complete(store, tmp_path: Path) -> None:
    local = tmp_path / "ckpt"
    local.mkdir()
    uploader = ckpt.CheckpointUploader(store, local, interval=0.05, log=lambda _: None).start()
    try:
        _write_checkpoint(local, 2, track=False)
        time.sleep(0.3)
        assert ckpt.remote_complete_steps(store) == []  # not complete yet: not uploaded
        ckpt.write_tracker(local, 2)
        deadline = time.monotonic() + 10
        while ckpt.remote_complete_steps(store) != [2] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ckpt.remote_complete_steps(store) == [2]  # uploaded while "training" goes on
        _write_checkpoint(local, 4)
    finally:
        uploaded = uploader.finish()  # the last pass picks up step 4
    assert sorted(uploaded) == [2, 4]
    assert ckpt.remote_complete_steps(store) == [2, 4]


def test_uploader_skips_steps_already_in_the_output(store, tmp_path: Path) -> None:
    local = tmp_path / "ckpt"
    _write_checkpoint(local, 1)
    ckpt.upload_checkpoint(store, local, 1)
    _write_checkpoint(local, 2)
    uploader = ckpt.CheckpointUploader(store, local, already_uploaded={1}, log=lambda _: None)
    assert sorted(uploader.finish()) == [2]


def test_uploader_reports_failures(tmp_path: Path) -> None:
    local = tmp_path / "ckpt"
    _write_checkpoint(local, 1)
    blocker = tmp_path / "output"
    blocker.write_text("a file where the output folder should be")
    uploader = ckpt.CheckpointUploader(open_store(blocker), local, retries=1, log=lambda _: None)
    with pytest.raises(StorageError, match="could not upload checkpoint step 1"):
        uploader.finish()


@pytest.mark.parametrize("rel", ["../escaped.bin", "/abs/escaped.bin", "a/../../escaped.bin", "C:\\escaped.bin"])
def test_marker_names_outside_the_checkpoint_are_refused(rel: str, tmp_path: Path) -> None:
    store = open_store(tmp_path / "output")
    store.put_bytes("checkpoints/global_step_1/model.bin", b"weights")
    store.put_bytes(
        f"checkpoints/global_step_1/{ckpt.MARKER_FILE}",
        json.dumps({"step": 1, "files": {"model.bin": 7, rel: 5}}).encode(),
    )
    with pytest.raises(StorageError, match="tampered"):
        ckpt.download_checkpoint(store, 1, tmp_path / "work" / "ckpt")
    assert not (tmp_path / "work").exists()  # refused before writing anything


def test_step_names_and_folders(tmp_path: Path) -> None:
    assert ckpt.step_name(7) == "global_step_7" and ckpt.step_of("global_step_7") == 7
    assert ckpt.step_of("global_step_7x") is None and ckpt.step_of("step_7") is None
    assert ckpt.step_dir(tmp_path, 3) == tmp_path / "global_step_3"
    for step in (10, 2):
        _write_checkpoint(tmp_path, step, track=False)
    (tmp_path / "global_step_5").write_text("a file, not a checkpoint folder")
    (tmp_path / "global_step_y").mkdir()
    assert ckpt.step_dirs(tmp_path) == [(2, tmp_path / "global_step_2"), (10, tmp_path / "global_step_10")]
    assert ckpt.step_dirs(tmp_path / "missing") == []


def test_evaluable_checkpoints_are_complete_hugging_face_folders(store, tmp_path: Path) -> None:
    assert ckpt.evaluable_checkpoints(store) == []
    local = tmp_path / "ckpt"
    cpu_style = _write_checkpoint(local, 2)
    (cpu_style / "config.json").write_text("{}")  # the step folder is a Hugging Face folder
    verl_style = _write_checkpoint(local, 4)
    (verl_style / ckpt.HF_DIR).mkdir()
    (verl_style / ckpt.HF_DIR / "config.json").write_text("{}")  # merged into huggingface/ before upload
    _write_checkpoint(local, 6)  # FSDP shards only: complete, but no model to evaluate
    for step in (2, 4, 6):
        ckpt.upload_checkpoint(store, local, step)
    store.put_bytes("checkpoints/global_step_8/config.json", b"{}")  # an upload cut short: no marker
    found = ckpt.evaluable_checkpoints(store)
    assert [(c.name, c.step) for c in found] == [("global_step_2", 2), ("global_step_4", 4)]
    assert found[0].uri == ckpt.checkpoint_uri(store, 2)
    assert found[1].uri == store.url("checkpoints/global_step_4/huggingface")

    store.put_bytes(f"{ckpt.FINAL_PREFIX}/config.json", b"{}")
    final = ckpt.evaluable_checkpoints(store, steps_done=6)[-1]
    assert (final.name, final.step, final.uri) == ("final", 7, store.url("final"))  # sorts after every step
    assert ckpt.evaluable_checkpoints(store)[-1].step == 5  # without steps_done: after the last evaluable one
