"""Small copies of public grounding releases, laid out as they are distributed.

Each ``write_<dataset>(root)`` writes a handful of rows in the release's own file names,
columns and conventions under ``root`` and generates the images they point at (plain
PNG/JPEG files of the right sizes, made at test time, never committed). It returns a
:class:`Release` naming the annotation file(s), the images root and, per record id, the
group the rows must stay together by (patient, study or image) and the consensus box of
each finding, so tests can check reading, box conventions, grouping and splits.
"""

from __future__ import annotations

import csv
import io
import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Release:
    inputs: list[Path]
    images_root: Path
    fmt: str
    notes: dict[str, Any] = field(default_factory=dict)


def write_image(path: Path, size: tuple[int, int], fmt: str | None = None) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("L" if (fmt or path.suffix.lower()) in ("PNG", ".png") else "RGB", size, 40)
    image.save(path, format=fmt or ("JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"))


def _csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


# --------------------------------------------------------------------------- VinDr-CXR

VINDR_SIZE = (320, 256)
# finding -> consensus box; the three readers draw it a few pixels apart
VINDR_FINDINGS = {
    "Aortic enlargement": [150.0, 40.0, 200.0, 90.0],
    "Cardiomegaly": [90.0, 120.0, 250.0, 220.0],
    "Nodule/Mass": [40.0, 60.0, 70.0, 90.0],
}
VINDR_JITTER = {"R8": (-3, -2, -3, -2), "R9": (0, 0, 0, 0), "R10": (3, 2, 3, 2)}


def write_vindr(root: Path, *, images: int = 12, reader_column: str = "rad_id", extension: str = ".png") -> Release:
    """``annotations_train.csv`` (three radiologists per image, a few pixels apart, "No
    finding" rows with empty coordinates) and ``annotations_test.csv`` (consensus, no
    reader column); images ``train/<image_id>.png`` derived from the DICOM ids."""
    header = ["image_id", reader_column, "class_name", "x_min", "y_min", "x_max", "y_max"]
    rows: list[list[Any]] = []
    consensus: dict[str, list[float]] = {}
    for n in range(images):
        image_id = f"{n:032x}"  # VinDr ids are 32 hex digits
        write_image(root / "train" / f"{image_id}{extension}", VINDR_SIZE)
        findings = list(VINDR_FINDINGS.items())[: 1 + n % 3]
        for reader, jitter in VINDR_JITTER.items():
            if n % 4 == 3 and reader == "R10":  # one reader saw nothing on this image
                rows.append([image_id, reader, "No finding", "", "", "", ""])
                continue
            for class_name, box in findings:
                rows.append([image_id, reader, class_name, *[b + j for b, j in zip(box, jitter)]])
        readers = [j for r, j in VINDR_JITTER.items() if not (n % 4 == 3 and r == "R10")]
        for class_name, box in findings:  # the consensus of the readers who boxed it
            consensus[f"annotations_train:{image_id}:{class_name}"] = [
                b + sum(j[i] for j in readers) / len(readers) for i, b in enumerate(box)]
    train = root / "annotations" / "annotations_train.csv"
    _csv(train, header, rows)
    test_rows = []
    for n in range(2):
        image_id = f"{1000 + n:032x}"
        write_image(root / "train" / f"{image_id}{extension}", VINDR_SIZE)
        box = VINDR_FINDINGS["Cardiomegaly"]
        test_rows.append([image_id, "Cardiomegaly", *box])
        consensus[f"annotations_test:{image_id}:Cardiomegaly"] = box
    test = root / "annotations" / "annotations_test.csv"
    _csv(test, ["image_id", "class_name", "x_min", "y_min", "x_max", "y_max"], test_rows)
    return Release([train, test], root / "train", "vindr-csv", {"consensus": consensus})


# --------------------------------------------------------------------------- MS-CXR

MSCXR_HEADER = ["dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h", "image_width",
                "image_height", "split"]


def write_mscxr(root: Path, *, patients: int = 10, studies_per_patient: int = 3) -> Release:
    """``MS_CXR_Local_Alignment_v1.1.0.csv`` over MIMIC-CXR-JPG paths
    ``files/pXX/pXXXXXXXX/sXXXXXXXX/<dicom_id>.jpg``: several studies per patient, the
    release's own ``split`` column set per image (so it would leak patients)."""
    rows: list[list[Any]] = []
    patient_of: dict[str, str] = {}
    for p in range(patients):
        patient = f"p1{p:07d}"
        for s in range(studies_per_patient):
            study = f"s5{p:04d}{s:03d}"
            dicom = f"{p:08x}-{s:08x}-dicom"
            rel = f"files/{patient[:3]}/{patient}/{study}/{dicom}.jpg"
            write_image(root / rel, (200, 160))
            split = ("train", "val", "test")[s % 3]  # per image: the same patient in every split
            rows.append([dicom, "Pneumonia", "patchy opacity at the right base", rel, 20, 30, 40, 50, 200, 160, split])
            rows.append([dicom, "Pneumonia", "patchy opacity at the right base", rel, 120, 30, 30, 40, 200, 160, split])
            patient_of[rel] = patient
    path = root / "MS_CXR_Local_Alignment_v1.1.0.csv"
    _csv(path, MSCXR_HEADER, rows)
    return Release([path], root, "mscxr", {"patient_of": patient_of})


# --------------------------------------------------------------------------- PadChest-GR

PADCHEST_SIZE = (300, 240)


def write_padchest_gr(root: Path, *, patients: int = 8) -> Release:
    """``grounded_reports_20240819.json`` (studies with ``ImageID`` and ``findings``:
    ``sentence_en``, ``sentence_es``, ``abnormal``, ``labels``, normalized ``boxes``) and
    ``master_table.csv`` (``ImageID, StudyID, PatientID, split``); two studies per patient."""
    reports, table = [], []
    for p in range(patients):
        patient = f"{70000 + p}"
        for s in range(2):
            image = f"2168401113669640{p:02d}{s}_02-0{p}-{s}.png"
            study = f"{p:02d}{s}9901"
            write_image(root / "images" / image, PADCHEST_SIZE)
            reports.append({
                "ImageID": image,
                "findings": [
                    {"sentence_en": "Cardiomegaly.", "sentence_es": "Cardiomegalia.", "abnormal": True,
                     "labels": ["cardiomegaly"], "locations": [], "boxes": [[0.3, 0.4, 0.7, 0.8]]},
                    {"sentence_en": "Right pleural effusion.", "sentence_es": "Derrame pleural derecho.",
                     "abnormal": True, "labels": ["pleural effusion"], "locations": ["right"],
                     "boxes": [[0.05, 0.6, 0.3, 0.9], [0.06, 0.5, 0.2, 0.6]]},
                    {"sentence_en": "No other significant alterations.", "sentence_es": "Sin otras alteraciones.",
                     "abnormal": False, "labels": [], "locations": [], "boxes": []},
                ],
            })
            table.append([image, study, patient, ("train", "validation", "test")[(p + s) % 3]])
    path = root / "grounded_reports_20240819.json"
    path.write_text(json.dumps(reports))
    _csv(root / "master_table.csv", ["ImageID", "StudyID", "PatientID", "split"], table)
    return Release([path], root / "images", "padchest-gr")


# --------------------------------------------------------------------------- RefCOCO

def _refcoco_objects(images: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    coco_images, annotations, refs = [], [], []
    for i in range(images):
        image_id = 581857 + i
        coco_images.append({"id": image_id, "file_name": f"COCO_train2014_{image_id:012d}.jpg", "width": 160,
                            "height": 120})
        for k in range(2):
            ann_id = 1000 * i + k
            annotations.append({"id": ann_id, "image_id": image_id, "category_id": 1, "bbox": [10.0 + 60 * k, 20.0,
                                                                                           40.0, 50.0],
                                "area": 2000.0, "iscrowd": 0})
            refs.append({"sent_ids": [2 * ann_id, 2 * ann_id + 1], "file_name": f"COCO_train2014_{image_id:012d}_"
                                                                                 f"{ann_id}.jpg",
                         "ann_id": ann_id, "ref_id": ann_id, "image_id": image_id,
                         "split": ("train", "val", "testA", "testB")[i % 4], "category_id": 1,
                         "sentences": [{"tokens": ["man", "on", "left"], "raw": "Man on left",
                                        "sent_id": 2 * ann_id, "sent": "man on left" if k == 0 else "man on right"},
                                       {"tokens": ["guy"], "raw": "guy", "sent_id": 2 * ann_id + 1, "sent": "guy"}]})
    return refs, {"images": coco_images, "annotations": annotations, "categories": [{"id": 1, "name": "person"}]}


def write_refcoco(root: Path, *, images: int = 8, name: str = "refcoco") -> Release:
    """``<name>/refs(unc).p`` (pickled list of refs) + ``<name>/instances.json`` and the COCO
    ``train2014/`` images they name."""
    refs, instances = _refcoco_objects(images)
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "refs(unc).p", "wb") as handle:
        pickle.dump(refs, handle, protocol=2)
    (folder / "instances.json").write_text(json.dumps(instances))
    for image in instances["images"]:
        write_image(root / "train2014" / image["file_name"], (160, 120))
    return Release([folder / "refs(unc).p"], root / "train2014", "refcoco")


def write_refcoco_parquet(root: Path, *, images: int = 8) -> Release:
    """The common parquet export: one row per ref with ``image_path``, ``bbox`` (COCO xywh),
    ``sentences``, ``image_id``, ``ref_id``, ``split`` (and an embedded ``image`` column
    that the reader never loads)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    refs, instances = _refcoco_objects(images)
    anns = {a["id"]: a for a in instances["annotations"]}
    files = {i["id"]: i["file_name"] for i in instances["images"]}
    rows = [{"ref_id": r["ref_id"], "image_id": r["image_id"], "split": r["split"],
             "image_path": f"train2014/{files[r['image_id']]}", "bbox": anns[r["ann_id"]]["bbox"],
             "sentences": [{"raw": s["raw"], "sent": s["sent"]} for s in r["sentences"]],
             "image": {"bytes": b"\0" * 64, "path": None}} for r in refs]
    for file_name in files.values():
        write_image(root / "train2014" / file_name, (160, 120))
    path = root / "refcoco_train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return Release([path], root, "refcoco-parquet")


# --------------------------------------------------------------------------- ODVG

def write_odvg(root: Path, *, images: int = 6) -> Release:
    """Grounding-DINO ODVG JSONL: ``filename, height, width, grounding {caption, regions
    [{bbox xyxy, phrase}]}``."""
    lines = []
    for i in range(images):
        name = f"{i:012d}.jpg"
        write_image(root / "images" / name, (200, 150))
        lines.append(json.dumps({"filename": name, "height": 150, "width": 200, "grounding": {
            "caption": "a dog next to two cats",
            "regions": [{"bbox": [10, 10, 60, 80], "phrase": "a dog"},
                        {"bbox": [100, 20, 140, 70], "phrase": "two cats"},
                        {"bbox": [150, 30, 190, 90], "phrase": "two cats"}]}}))
    path = root / "odvg_train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return Release([path], root / "images", "odvg")


# --------------------------------------------------------------------------- VeRL parquet a user already has

def write_verl_parquet(root: Path, *, images: int = 8) -> Release:
    """A VeRL parquet like the draft guide's dataset script writes: ``data_source``,
    ``prompt`` (the question only), ``ability``, ``reward_model.ground_truth`` (box lists
    ``[x1, y1, x2, y2]`` in pixels), ``extra_info.image_path`` (relative), no images."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for i in range(images):
        rel = f"mimic/p1{i:07d}/s5{i:07d}/img{i}.jpg"
        write_image(root / rel, (256, 256))
        rows.append({
            "data_source": "radvlm_grounding",
            "prompt": [{"role": "user", "content": "<image>\nLocate the left lower lobe opacity."}],
            "ability": "grounding",
            "reward_model": {"style": "rule", "ground_truth": [[30.0 + i, 40.0, 120.0, 160.0]]},
            "extra_info": {"split": "train", "index": i, "image_path": rel},
        })
    path = root / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return Release([path], root, "verl-parquet")


def malicious_pickle() -> bytes:
    """A pickle that would run ``os.system`` when loaded by ``pickle.load``."""

    class Exploit:
        def __reduce__(self):
            import os

            return (os.system, ("exit 0",))

    return pickle.dumps([Exploit()], protocol=2)


def png_bytes(size: tuple[int, int]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", size, 0).save(buffer, format="PNG")
    return buffer.getvalue()
