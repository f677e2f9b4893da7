"""Public grounding releases read as they are distributed (fixtures in tests/data/releases/):
VinDr-CXR's three readers, MS-CXR's patients, PadChest-GR's normalized boxes, the RefCOCO
family (pickle + instances.json, parquet export), ODVG and an existing VeRL parquet; each
for reading, box conventions, grouping (no group crosses splits) and bad rows."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "data" / "releases"))
import make_releases  # noqa: E402

from grounding_ops.data.prepare import PrepareSettings, prepare  # noqa: E402
from grounding_ops.data.readers import (  # noqa: E402
    ReadInfo,
    ReadOptions,
    SkippedRow,
    detect_format,
    fuse_reader_boxes,
    read_records,
)
from grounding_ops.data.schema import CanonicalRecord, ParseFailure  # noqa: E402

SMALL = dict(min_pixels=56 * 56, max_pixels=112 * 112, val_fraction=0.25, test_fraction=0.25)


def _read(
    path: Path, fmt: str | None = None, **options: Any
) -> tuple[list[CanonicalRecord], list[ParseFailure], list[SkippedRow], ReadInfo]:
    info = ReadInfo()
    items = list(read_records(path, fmt, options=ReadOptions(**options), info=info))
    return (
        [i for i in items if isinstance(i, CanonicalRecord)],
        [i for i in items if isinstance(i, ParseFailure)],
        [i for i in items if isinstance(i, SkippedRow)],
        info,
    )


def _prepare(release: make_releases.Release, tmp_path: Path, **settings: Any) -> tuple[Any, dict, list[dict], dict]:
    """Run prepare on a release; return the result, the manifest, the exported rows and the
    group of each valid id."""
    import pyarrow.parquet as pq

    work = tmp_path / "work"
    result = prepare(
        [str(p) for p in release.inputs],
        images_root=str(release.images_root),
        output_uri=str(tmp_path / "out"),
        settings=PrepareSettings(**{**SMALL, **settings}),
        work_dir=work,
    )
    manifest = json.loads((Path(result.dataset_uri) / "manifest.json").read_text())
    rows = []
    for split in ("train", "val", "test"):
        for row in pq.read_table(Path(result.dataset_uri) / f"{split}.parquet").to_pylist():
            rows.append({"split": split, "id": row["extra_info"]["id"], "gt": row["reward_model"]["ground_truth"]})
    groups = {json.loads(line)["id"]: json.loads(line)["group"] for line in (work / "valid.jsonl").open()}
    return result, manifest, rows, groups


def _no_group_crosses_splits(rows: list[dict], groups: dict[str, str]) -> set[str]:
    split_of: dict[str, set[str]] = {}
    for row in rows:
        split_of.setdefault(groups[row["id"]], set()).add(row["split"])
    crossing = {g for g, splits in split_of.items() if len(splits) > 1}
    assert not crossing, f"groups in several splits: {sorted(crossing)}"
    return {s for splits in split_of.values() for s in splits}


def _consensus_score(row: dict, box: list[float]) -> float:
    from grounding_ops.protocols import get_protocol
    from grounding_ops.reward import compute_score

    gt = row["gt"]
    answer = get_protocol(gt["protocol"]).format_answer([box], gt["image_size"], gt["resized_size"])
    return compute_score("grounding/x", answer, gt)["score"]


# --------------------------------------------------------------------------- VinDr-CXR


def test_fusion_merges_three_readers_and_keeps_separate_findings() -> None:
    fused = fuse_reader_boxes(
        {
            "R1": [[10.0, 10.0, 50.0, 50.0], [200.0, 200.0, 240.0, 260.0]],
            "R2": [[12.0, 11.0, 52.0, 49.0]],
            "R3": [[8.0, 12.0, 51.0, 51.0]],
        },
        0.3,
    )
    assert fused == [[10.0, 11.0, 51.0, 50.0], [200.0, 200.0, 240.0, 260.0]]
    # the same reader's two boxes never merge, however much they overlap
    assert len(fuse_reader_boxes({"R1": [[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0]]}, 0.3)) == 2


def test_vindr_default_ground_truth_lets_the_consensus_answer_score_high(tmp_path: Path) -> None:
    release = make_releases.write_vindr(tmp_path / "vindr")
    # the model sees the image near its real size (a tiny resize would quantize the answer)
    result, manifest, rows, groups = _prepare(release, tmp_path, max_pixels=320 * 256)
    consensus = release.notes["consensus"]
    assert result.accepted and len(rows) == len(consensus)
    scores = [_consensus_score(row, consensus[row["id"]]) for row in rows]
    assert min(scores) >= 0.9, scores
    assert all(len(row["gt"]["boxes"]) == 1 for row in rows)  # one fused box per finding
    train_input = next(i for i in manifest["inputs"] if i["name"] == "annotations_train.csv")
    multi = train_input["reader"]["multi_reader"]
    assert (multi["mode"], multi["reader_column"], multi["readers"]) == ("fuse", "rad_id", 3)
    assert multi["readers_per_finding"]["3"] > 0 and "fusion" in multi
    assert manifest["grouping"]["per_input"][0]["group_by"] == "image"
    assert manifest["counts"]["skipped"] == 3  # "No finding" rows
    assert _no_group_crosses_splits(rows, groups) == {"train", "val", "test"}


def test_vindr_keep_every_reader_scores_a_third(tmp_path: Path) -> None:
    """What the option ``all`` means for the reward: three boxes, the consensus answer ~1/3."""
    release = make_releases.write_vindr(tmp_path / "vindr", images=4)
    _, manifest, rows, _ = _prepare(release, tmp_path, multi_reader="all")
    consensus = release.notes["consensus"]
    train_rows = [r for r in rows if r["id"].startswith("annotations_train:") and len(r["gt"]["boxes"]) == 3]
    assert train_rows and all(_consensus_score(r, consensus[r["id"]]) < 0.4 for r in train_rows)
    assert manifest["inputs"][0]["reader"]["multi_reader"]["mode"] == "all"


def test_vindr_one_reader_and_rad_ID_column_and_jpeg_names(tmp_path: Path) -> None:
    release = make_releases.write_vindr(tmp_path / "vindr", images=4, reader_column="rad_ID", extension=".jpg")
    records, failures, skipped, info = _read(
        release.inputs[0], multi_reader="one", reader_id="R10", image_extension=".jpg"
    )
    assert not failures and info.multi_reader["reader_column"] == "rad_ID"
    record = next(r for r in records if r.phrase == "Aortic enlargement")
    assert record.boxes == [[153.0, 42.0, 203.0, 92.0]]  # R10's box only
    assert record.image.endswith(".jpg") and record.width is None  # the size comes from the image
    assert any("no box by reader 'R10'" in s.reason for s in skipped)
    test_records, _, _, test_info = _read(release.inputs[1])
    assert test_info.multi_reader["reader_column"] == "" and test_records[0].boxes == [[90.0, 120.0, 250.0, 220.0]]


def test_vindr_bad_rows_are_quarantined(tmp_path: Path) -> None:
    path = tmp_path / "annotations_train.csv"
    path.write_text(
        "image_id,rad_id,class_name,x_min,y_min,x_max,y_max\n"
        "a,R1,Nodule/Mass,1,2,abc,4\n"
        ",R1,Nodule/Mass,1,2,3,4\n"
        "b,R1,Nodule/Mass,1,2,3,4,99\n"
        "c,R1,No finding,,,,\n"
    )
    records, failures, skipped, _ = _read(path)
    assert records[0].boxes == [[1.0, 2.0, "abc", 4.0]]  # left for validation to reject
    assert [f.position for f in failures] == ["annotations_train.csv:3", "annotations_train.csv:4"]
    assert len(skipped) == 1


def test_dicom_ids_become_image_file_names(tmp_path: Path) -> None:
    path = tmp_path / "annotations_train.csv"
    path.write_text(
        "image_id,class_name,x_min,y_min,x_max,y_max\nabc.dicom,Nodule/Mass,1,2,3,4\nxyz.png,Nodule/Mass,1,2,3,4\n"
    )
    records, _, _, _ = _read(path, image_extension=".jpg")
    assert sorted(r.image for r in records) == ["abc.jpg", "xyz.png"]


# --------------------------------------------------------------------------- MS-CXR


def test_mscxr_groups_by_patient_and_no_patient_crosses_splits(tmp_path: Path) -> None:
    release = make_releases.write_mscxr(tmp_path / "mscxr")
    result, manifest, rows, groups = _prepare(release, tmp_path)
    assert result.accepted and result.counts["valid"] == 30
    patient_of = release.notes["patient_of"]
    assert set(groups.values()) == set(patient_of.values())  # the group is the pXXXXXXXX folder
    assert _no_group_crosses_splits(rows, groups) == {"train", "val", "test"}
    assert manifest["grouping"]["per_input"][0]["group_by"] == "patient"
    assert all(len(r["gt"]["boxes"]) == 2 for r in rows)  # both boxes of the phrase, xywh -> xyxy
    assert sorted(map(tuple, rows[0]["gt"]["boxes"])) == [(20.0, 30.0, 60.0, 80.0), (120.0, 30.0, 150.0, 70.0)]


def test_mscxr_release_split_only_when_asked(tmp_path: Path) -> None:
    release = make_releases.write_mscxr(tmp_path / "mscxr", patients=2)
    records, _, _, info = _read(release.inputs[0])
    assert {r.split for r in records} == {None} and info.split_from == "group hash"
    records, _, _, info = _read(release.inputs[0], source_split=True)
    assert {r.split for r in records} == {"train", "val", "test"}
    study_records, _, _, _ = _read(release.inputs[0], group_by="study")
    assert all(r.group.startswith("s5") for r in study_records)


def test_mscxr_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "MS_CXR_Local_Alignment_v1.1.0.csv"
    path.write_text(
        ",".join(make_releases.MSCXR_HEADER) + "\n"
        "d1,Pneumonia,opacity,files/p10/p10000001/s1/d1.jpg,1,2,3,4,10,10,train\n"
        "d2,Pneumonia,opacity,,1,2,3,4,10,10,train\n"
        "d3,Pneumonia,opacity,files/p10/p10000001/s1/d3.jpg,1,2,3,4,10,10,holdout\n"
    )
    records, failures, _, info = _read(path, source_split=True)
    assert [r.image for r in records] == ["files/p10/p10000001/s1/d1.jpg", "d2.png"]  # d2: from dicom_id
    assert records[1].group == "d2.png" and info.notes == ["1 rows had no patient: grouped by image"]
    _, strict, _, _ = _read(path, group_by="patient")
    assert "no patient" in strict[0].detail
    assert "split column says 'holdout'" in failures[0].detail


# --------------------------------------------------------------------------- PadChest-GR


def test_padchest_gr_normalized_boxes_patients_and_skipped_sentences(tmp_path: Path) -> None:
    release = make_releases.write_padchest_gr(tmp_path / "padchest")
    assert detect_format(release.inputs[0]) == "padchest-gr"
    records, failures, skipped, info = _read(release.inputs[0])
    assert not failures and len(skipped) == 16 and len(records) == 32
    assert info.group_by == "patient" and records[0].group == "70000" and records[0].box_units == "normalized"
    result, manifest, rows, groups = _prepare(release, tmp_path)
    effusion = next(r for r in rows if r["id"].endswith(":1"))
    w, h = make_releases.PADCHEST_SIZE
    assert effusion["gt"]["image_size"] == [w, h]
    assert effusion["gt"]["boxes"][0] == pytest.approx([0.05 * w, 0.6 * h, 0.3 * w, 0.9 * h])
    assert _no_group_crosses_splits(rows, groups) and len(set(groups.values())) == 8
    assert manifest["inputs"][0]["reader"]["box_convention"].startswith("normalized")


def test_padchest_gr_official_split_and_bad_studies(tmp_path: Path) -> None:
    release = make_releases.write_padchest_gr(tmp_path / "padchest", patients=3)
    records, _, _, _ = _read(release.inputs[0], source_split=True)
    assert {r.split for r in records} == {"train", "val", "test"}
    bad = tmp_path / "grounded_reports_bad.json"
    bad.write_text(
        json.dumps(
            [{"ImageID": "x.png", "findings": [{"sentence_en": "Nodule.", "boxes": "0,0,1,1"}]}, {"findings": []}, 7]
        )
    )
    _, failures, _, _ = _read(bad, group_by="image")
    assert len(failures) == 3 and "'boxes'" in failures[0].detail and "ImageID" in failures[1].detail


# --------------------------------------------------------------------------- RefCOCO family


def test_refcoco_pickle_and_instances(tmp_path: Path) -> None:
    release = make_releases.write_refcoco(tmp_path / "refer")
    assert detect_format(release.inputs[0]) == "refcoco"
    records, failures, _, info = _read(release.inputs[0], source_split=True)
    assert not failures and len(records) == 8 * 2 * 2  # images x refs x sentences
    first = records[0]
    assert (first.id, first.phrase, first.boxes) == ("refcoco/refs(unc):0:0", "man on left", [[10.0, 20.0, 50.0, 70.0]])
    assert first.image == "COCO_train2014_000000581857.jpg" and first.source == "refcoco"
    assert {r.split for r in records} == {"train", "val", "test"}  # testA/testB are test
    result, _, rows, groups = _prepare(release, tmp_path)
    assert result.accepted and _no_group_crosses_splits(rows, groups) == {"train", "val", "test"}
    assert len(set(groups.values())) == 8  # every expression of an image in one split


def test_refcoco_pickle_cannot_run_code(tmp_path: Path) -> None:
    """A refs file whose pickle calls os.system is refused by the restricted unpickler (a plain
    pickle.load would run the command): one parse failure, nothing executed."""
    folder = tmp_path / "refcoco"
    folder.mkdir()
    (folder / "instances.json").write_text(json.dumps({"images": [], "annotations": []}))
    (folder / "refs(unc).p").write_bytes(make_releases.malicious_pickle())
    records, failures, _, _ = _read(folder / "refs(unc).p")
    assert not records and len(failures) == 1
    assert "refusing to load" in failures[0].detail and "system" in failures[0].detail


def test_refcoco_parquet_export(tmp_path: Path) -> None:
    release = make_releases.write_refcoco_parquet(tmp_path / "refcoco")
    assert detect_format(release.inputs[0]) == "refcoco-parquet"
    records, failures, _, info = _read(release.inputs[0])
    assert not failures and len(records) == 32 and info.box_convention.startswith("pixel [x, y, w, h]")
    assert records[0].boxes == [[10.0, 20.0, 50.0, 70.0]] and records[0].group == "581857"
    result, _, rows, groups = _prepare(release, tmp_path)
    assert result.accepted and _no_group_crosses_splits(rows, groups)


# --------------------------------------------------------------------------- ODVG


def test_odvg_regions_by_phrase(tmp_path: Path) -> None:
    release = make_releases.write_odvg(tmp_path / "odvg")
    assert detect_format(release.inputs[0]) == "odvg"
    records, failures, _, _ = _read(release.inputs[0])
    cats = next(r for r in records if r.phrase == "two cats")
    assert not failures and cats.boxes == [[100.0, 20.0, 140.0, 70.0], [150.0, 30.0, 190.0, 90.0]]
    result, _, rows, groups = _prepare(release, tmp_path)
    assert result.accepted and result.counts["valid"] == 12 and _no_group_crosses_splits(rows, groups)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"filename": "a.jpg", "grounding": {"regions": [{"bbox": [0, 0, 1, 1]}]}})
        + "\n"
        + json.dumps({"filename": "a.jpg"})
        + "\n"
    )
    _, failures, _, _ = _read(bad, "odvg")
    assert "'phrase'" in failures[0].detail and "grounding.regions" in failures[1].detail


# --------------------------------------------------------------------------- VeRL parquet import


def test_verl_parquet_import(tmp_path: Path) -> None:
    release = make_releases.write_verl_parquet(tmp_path / "verl")
    assert detect_format(release.inputs[0]) == "verl-parquet"
    records, failures, _, _ = _read(release.inputs[0])
    assert not failures
    assert (records[0].phrase, records[0].boxes, records[0].source) == (
        "Locate the left lower lobe opacity.",
        [[30.0, 40.0, 120.0, 160.0]],
        "radvlm_grounding",
    )
    result, _, rows, groups = _prepare(release, tmp_path)
    assert result.accepted and result.counts["valid"] == 8 and _no_group_crosses_splits(rows, groups)
    assert rows[0]["gt"]["image_size"] == [256, 256]


def test_verl_parquet_box_conventions_and_bad_rows(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "mine.parquet"
    rows = [
        {
            "prompt": "<image> find it",
            "reward_model": {"ground_truth": json.dumps([{"x": 1, "y": 2, "width": 3, "height": 4}])},
            "extra_info": {"image_path": "a.png", "phrase": "the thing"},
        },
        {
            "prompt": "<image> find it",
            "reward_model": {"ground_truth": "[[0.1, 0.2, 0.5, 0.6]]"},
            "extra_info": {"image_path": "a.png"},
        },
        {
            "prompt": "<image> find it",
            "reward_model": {"ground_truth": "{not json"},
            "extra_info": {"image_path": "a.png"},
        },
        {"prompt": "<image> find it", "reward_model": {"ground_truth": "[]"}, "extra_info": {"image_path": None}},
    ]
    pq.write_table(pa.Table.from_pylist(rows), path)
    records, failures, _, _ = _read(path, "verl-parquet")
    assert records[0].boxes == [[1.0, 2.0, 4.0, 6.0]] and records[0].phrase == "the thing"
    assert records[1].box_units == "normalized" and records[1].phrase == "find it"
    assert "invalid JSON" in failures[0].detail and "image_path" in failures[1].detail


# --------------------------------------------------------------------------- group keys


def test_explicit_group_column_and_unavailable_group_key(tmp_path: Path) -> None:
    release = make_releases.write_vindr(tmp_path / "vindr", images=2)
    path = tmp_path / "with_site.csv"
    text = release.inputs[0].read_text().splitlines()
    path.write_text("\n".join([text[0] + ",site"] + [line + ",hospital-a" for line in text[1:]]) + "\n")
    records, _, _, info = _read(path, group_by="column:site")
    assert {r.group for r in records} == {"hospital-a"} and info.group_by == "column:site"
    with pytest.raises(ValueError, match="--group-by patient is not available for vindr-csv"):
        _read(release.inputs[0], group_by="patient")
