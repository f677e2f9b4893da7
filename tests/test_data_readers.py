"""Every reader maps its format into canonical records; unparseable rows become parse failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grounding_ops.data.readers import ReadOptions, SkippedRow, detect_format, read_records
from grounding_ops.data.schema import CanonicalRecord, ParseFailure


def _split(items):
    records = [i for i in items if isinstance(i, CanonicalRecord)]
    failures = [i for i in items if isinstance(i, ParseFailure)]
    skipped = [i for i in items if isinstance(i, SkippedRow)]
    return records, failures, skipped


def test_canonical_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "ann.jsonl"
    path.write_text(
        json.dumps(
            {
                "id": "a",
                "image": "x.png",
                "phrase": " the dog ",
                "boxes": [[1, 2, 3, 4]],
                "width": 10,
                "height": 8,
                "source": "s",
                "group": "p1",
            }
        )
        + "\n\n"
        + json.dumps({"id": 7, "image": "y.png", "phrase": "cat", "boxes": [[0, 0, 1, 1], [2, 2, 3, 3]]})
        + "\n"
    )
    records, failures, _ = _split(list(read_records(path)))
    assert not failures
    a, b = records
    assert (a.id, a.image, a.phrase, a.boxes, a.width, a.height, a.source, a.group) == (
        "a",
        "x.png",
        "the dog",
        [[1, 2, 3, 4]],
        10,
        8,
        "s",
        "p1",
    )
    assert (b.id, b.source, b.group_key, b.position) == ("7", "ann", "y.png", "ann.jsonl:3")
    assert b.raw["phrase"] == "cat"


def test_jsonl_parse_errors_keep_position_and_raw(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    lines = [
        '{"id": "ok", "image": "x.png", "phrase": "p", "boxes": [[0, 0, 1, 1]]}',
        '{"id": "broken", "image": ',  # invalid JSON
        '["not", "an", "object"]',
        '{"image": "x.png", "phrase": "p", "boxes": []}',  # no id
        '{"id": "t1", "image": "x.png", "phrase": "p", "boxes": "0,0,1,1"}',  # wrong type
        '{"id": "t2", "image": "x.png", "phrase": 5, "boxes": []}',
        '{"id": "t3", "image": "x.png", "phrase": "p", "boxes": [], "width": "wide"}',
        '{"id": "t4", "image": 3, "phrase": "p", "boxes": []}',
    ]
    path.write_text("\n".join(lines) + "\n")
    path.open("ab").write(b"\xff\xfe not utf8\n")
    records, failures, _ = _split(list(read_records(path, "jsonl")))
    assert [r.id for r in records] == ["ok"]
    assert [f.position for f in failures] == [f"bad.jsonl:{n}" for n in range(2, 10)]
    assert "invalid JSON" in failures[0].detail and failures[0].raw == lines[1]
    assert "JSON object" in failures[1].detail
    assert "'id'" in failures[2].detail
    assert "'boxes'" in failures[3].detail and failures[3].id == "t1" and failures[3].raw["boxes"] == "0,0,1,1"
    assert "'phrase'" in failures[4].detail
    assert "'width'" in failures[5].detail
    assert "'image'" in failures[6].detail
    assert "UTF-8" in failures[7].detail
    assert all(f.reason == "parse_error" for f in failures)


def test_normalized_jsonl_marks_units(tmp_path: Path) -> None:
    path = tmp_path / "norm.jsonl"
    path.write_text(json.dumps({"id": "n", "image": "x.png", "phrase": "p", "boxes": [[0.1, 0.2, 0.5, 0.6]]}) + "\n")
    (record,) = list(read_records(path, "normalized"))
    assert record.box_units == "normalized" and record.boxes == [[0.1, 0.2, 0.5, 0.6]]


def test_coco_category_and_caption(tmp_path: Path) -> None:
    path = tmp_path / "instances.json"
    path.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "a.png", "width": 50, "height": 40}, {"id": 2, "file_name": "b.png"}],
                "categories": [{"id": 3, "name": "dog"}, {"id": 4, "name": "cat"}],
                "annotations": [
                    {"id": 10, "image_id": 1, "category_id": 3, "bbox": [1, 2, 10, 20]},
                    {"id": 11, "image_id": 1, "category_id": 3, "bbox": [20, 5, 5, 5]},
                    {"id": 12, "image_id": 2, "category_id": 4, "bbox": [0, 0, 3, 3], "caption": "the sleepy cat"},
                    {"id": 13, "image_id": 99, "category_id": 3, "bbox": [0, 0, 1, 1]},
                    {"id": 14, "image_id": 2, "category_id": 77, "bbox": [0, 0, 1, 1]},
                    {"id": 15, "image_id": 2, "category_id": 4, "bbox": [0, 0, "x", 1]},
                ],
            }
        )
    )
    records, failures, _ = _split(list(read_records(path)))
    by_phrase = {r.phrase: r for r in records}
    dog = by_phrase["dog"]
    assert dog.boxes == [[1.0, 2.0, 11.0, 22.0], [20.0, 5.0, 25.0, 10.0]]
    assert (dog.image, dog.width, dog.height, dog.group, dog.id) == ("a.png", 50, 40, "1", "instances:1-cat3")
    assert by_phrase["the sleepy cat"].boxes == [[0.0, 0.0, 3.0, 3.0]]
    assert by_phrase["cat"].boxes == [[0.0, 0.0, "x", 1.0]]  # left for validation to reject
    assert sorted(f.position for f in failures) == ["instances.json:annotations[3]", "instances.json:annotations[4]"]


def test_coco_not_json_is_one_parse_failure(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text("{nope")
    (failure,) = list(read_records(path, "coco"))
    assert isinstance(failure, ParseFailure) and "not valid JSON" in failure.detail


def test_vindr_csv_groups_boxes_and_skips_no_finding(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text(
        "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"
        "img1,Aortic enlargement,0,R1,10,20,30,40\n"
        "img1,Aortic enlargement,0,R2,11,21,31,41\n"
        "img1,No finding,14,R3,,,,\n"
        "img2,Nodule/Mass,8,R1,5,5,abc,9\n"
        ",Nodule/Mass,8,R1,5,5,6,9\n"
    )
    assert detect_format(path) == "vindr-csv"
    records, failures, skipped = _split(list(read_records(path, options=ReadOptions(multi_reader="all"))))
    aortic = next(r for r in records if r.phrase == "Aortic enlargement")
    assert aortic.boxes == [[10.0, 20.0, 30.0, 40.0], [11.0, 21.0, 31.0, 41.0]]
    fused, _, _ = _split(list(read_records(path)))  # default: the readers' boxes fused
    assert next(r for r in fused if r.phrase == "Aortic enlargement").boxes == [[10.5, 20.5, 30.5, 40.5]]
    assert (aortic.image, aortic.group, aortic.id) == ("img1.png", "img1", "train:img1:Aortic enlargement")
    nodule = next(r for r in records if r.phrase == "Nodule/Mass")
    assert nodule.boxes == [[5.0, 5.0, "abc", 9.0]]
    assert [s.position for s in skipped] == ["train.csv:4"]
    assert [f.position for f in failures] == ["train.csv:6"]


def test_mscxr_xywh_rows(tmp_path: Path) -> None:
    path = tmp_path / "mscxr.csv"
    path.write_text(
        "dicom_id,label_text,x,y,w,h,image_width,image_height,subject_id\n"
        "d1,small left effusion,10,20,30,40,100,200,p9\n"
        "d1,small left effusion,50,60,5,5,100,200,p9\n"
        "d2.jpg,cardiomegaly,1,1,2,2,,,p8\n"
    )
    assert detect_format(path) == "mscxr"
    records, failures, _ = _split(list(read_records(path)))
    assert not failures
    effusion = next(r for r in records if r.image == "d1.png")
    assert effusion.boxes == [[10.0, 20.0, 40.0, 60.0], [50.0, 60.0, 55.0, 65.0]]
    assert (effusion.width, effusion.height, effusion.group, effusion.phrase) == (100, 200, "p9", "small left effusion")
    assert next(r for r in records if r.phrase == "cardiomegaly").image == "d2.jpg"
    assert effusion.id == "mscxr:d1.png:small left effusion"


def test_unknown_format_and_undetectable_name(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("x")
    with pytest.raises(ValueError, match="--format"):
        list(read_records(path))
    with pytest.raises(ValueError, match="unknown input format"):
        list(read_records(path, "yaml"))
