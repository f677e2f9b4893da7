"""Throughput and memory of ``grounding-ops prepare``, each next to its baseline in the same run.

* small images: rows/s of validation (readers + image checks + Great Expectations), of
  export (split + statistics + VeRL rows + parquet row groups) and of the whole prepare
  (validate + export + report + publish to a folder), against a plain
  ``pyarrow.parquet.write_table`` of the same rows built in memory;
* real-size images: the same with one 1024x1024 JPEG per row (what chest X-ray sets are);
* S3: the image checks' fetch from a local S3 endpoint (moto, its own process), in
  parallel, against a plain parallel ``get_object`` download of the same objects;
* memory: the peak RSS of a full prepare at two sizes (each in its own subprocess) for the
  canonical JSONL, COCO and VinDr-CXR readers; it must not grow in proportion to the rows.

    python benchmarks/prepare.py                 # 20k and 100k rows; RSS at 100k and 1M
    python benchmarks/prepare.py --rows 20000,100000 --real-rows 300 --s3-objects 300 \
        --rss-rows 10000,100000              # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from grounding_ops.data.synthetic import render_image  # noqa: E402

N_IMAGES = 300


def make_data(folder: Path, rows: int, seed: int = 0, fmt: str = "jsonl") -> tuple[Path, Path]:
    """``rows`` annotations (unique ids) spread over ``N_IMAGES`` small real images."""
    rng = random.Random(seed)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    shapes = []
    for i in range(N_IMAGES):
        width, height = rng.randint(32, 64), rng.randint(32, 64)
        image, drawn = render_image(rng, width, height, 2)
        image.save(images / f"{i:04d}.png")
        shapes.append((width, height, drawn or [("red", "circle", [0, 0, 8, 8])]))
    if fmt == "coco":
        return _write_coco(folder, rows, shapes), folder
    if fmt == "vindr-csv":
        return _write_vindr(folder, rows, shapes), folder
    annotations = folder / "annotations.jsonl"
    with open(annotations, "w") as handle:
        for r in range(rows):
            i = r % N_IMAGES
            width, height, drawn = shapes[i]
            color, shape, box = drawn[r % len(drawn)]
            handle.write(
                json.dumps(
                    {
                        "id": f"r{r}",
                        "image": f"images/{i:04d}.png",
                        "phrase": f"the {color} {shape}",
                        "boxes": [box],
                        "width": width,
                        "height": height,
                        "source": "bench",
                        "group": f"p{r % 5000}",
                    }
                )
                + "\n"
            )
    return annotations, folder


def settings():
    from grounding_ops.data.prepare import PrepareSettings

    return PrepareSettings(min_pixels=56 * 56, max_pixels=112 * 112, max_quarantine_fraction=1.0)


def baseline_write(work: Path, out: Path, prepare_settings) -> float:
    """Plain pyarrow: the same rows built in memory, one ``write_table``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from grounding_ops.data.export import build_row, verl_schema
    from grounding_ops.data.vision import smart_resize
    from grounding_ops.protocols import build_prompt

    start = time.perf_counter()
    cache: dict[str, bytes] = {}
    rows = []
    with open(work / "valid.jsonl") as handle:
        for index, line in enumerate(handle):
            row = json.loads(line)
            data = cache.get(row["image"])
            if data is None:
                data = cache[row["image"]] = (work.parent / "data" / row["image"]).read_bytes()
            size = (row["width"], row["height"])
            rows.append(
                build_row(
                    record_id=row["id"],
                    source=row["source"],
                    phrase=row["phrase"],
                    boxes=row["boxes"],
                    image_bytes=data,
                    image_size=size,
                    resized_size=smart_resize(
                        *size, min_pixels=prepare_settings.min_pixels, max_pixels=prepare_settings.max_pixels
                    ),
                    prompt=build_prompt(row["phrase"], prepare_settings.protocol),
                    protocol=prepare_settings.protocol,
                    split="train",
                    index=index,
                    min_pixels=prepare_settings.min_pixels,
                    max_pixels=prepare_settings.max_pixels,
                )
            )
    pq.write_table(pa.Table.from_pylist(rows, schema=verl_schema()), out / "baseline.parquet", compression="zstd")
    return time.perf_counter() - start


def _write_coco(folder: Path, rows: int, shapes: list) -> Path:
    """COCO with one image entry per row (each of the N_IMAGES files used many times) and one
    captioned annotation per row: one record per row."""
    images, annotations = [], []
    for r in range(rows):
        i = r % N_IMAGES
        width, height, drawn = shapes[i]
        color, shape, box = drawn[r % len(drawn)]
        images.append({"id": r, "file_name": f"images/{i:04d}.png", "width": width, "height": height})
        annotations.append(
            {
                "id": r,
                "image_id": r,
                "category_id": 1,
                "caption": f"the {color} {shape}",
                "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
            }
        )
    path = folder / "instances.json"
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "shape"}]})
    )
    return path


def _write_vindr(folder: Path, rows: int, shapes: list) -> Path:
    """VinDr-CXR CSV: three readers per finding, one finding per record (``rows`` records)."""
    import shutil

    path = folder / "annotations_train.csv"
    with open(path, "w") as handle:
        handle.write("image_id,rad_id,class_name,x_min,y_min,x_max,y_max\n")
        for r in range(rows):
            i = r % N_IMAGES
            _, _, drawn = shapes[i]
            color, shape, box = drawn[r % len(drawn)]
            for reader in ("R1", "R2", "R3"):
                handle.write(f"{r:08d},{reader},{color} {shape},{box[0]},{box[1]},{box[2]},{box[3]}\n")
    vindr = folder / "vindr"
    vindr.mkdir(exist_ok=True)
    for r in range(rows):  # VinDr names images by id: a hard link to its shared image (symlinks out of the
        target = vindr / f"{r:08d}.png"  # images root are refused)
        if not target.exists():
            os.link(folder / "images" / f"{r % N_IMAGES:04d}.png", target)
    shutil.move(str(path), str(vindr / path.name))
    return vindr / path.name


def make_real_size_data(folder: Path, rows: int, size: int = 1024) -> tuple[Path, Path]:
    """``rows`` annotations, each with its own ``size`` x ``size`` JPEG (an X-ray-like gradient with noise)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    base = np.linspace(0, 200, size, dtype=np.float32)[None, :] + np.linspace(0, 55, size, dtype=np.float32)[:, None]
    annotations = folder / "annotations.jsonl"
    with open(annotations, "w") as handle:
        for r in range(rows):
            noise = rng.normal(0, 12, (size, size)).astype(np.float32)
            pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(images / f"{r:05d}.jpg", quality=90)
            handle.write(
                json.dumps(
                    {
                        "id": f"x{r}",
                        "image": f"images/{r:05d}.jpg",
                        "phrase": "the opacity",
                        "boxes": [[100.0, 200.0, 400.0, 600.0]],
                        "group": f"p{r}",
                    }
                )
                + "\n"
            )
    return annotations, folder


def whole_prepare(annotations: Path, root: Path, base: Path, s) -> tuple[float, float, float, int]:
    """(validate s, export s, whole prepare s, rows) of one prepare to a local folder."""
    from grounding_ops.data.prepare import export_and_publish, validate_inputs

    start = time.perf_counter()
    summary = validate_inputs(  # as prepare runs it: the Data Docs render while the export runs
        [str(annotations)], images_root=str(root), settings=s, work_dir=base / "work", wait_for_docs=False
    )
    validate_s = time.perf_counter() - start
    mid = time.perf_counter()
    result = export_and_publish(base / "work", output_uri=str(base / "out"))
    export_s = time.perf_counter() - mid
    assert result.counts["valid"] == summary.counts["received"], result.counts
    return validate_s, export_s, time.perf_counter() - start, summary.counts["valid"]


def throughput(rows: int, label: str, make) -> None:
    """In a fresh interpreter (``--child-throughput``): what a ``grounding-ops prepare`` pays,
    Great Expectations' and matplotlib's imports included; pyarrow, pandas and Pillow are
    imported first, as the plain write has them too."""
    import pandas  # noqa: F401
    import PIL.Image  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as tmp:
        base = Path(tmp)
        annotations, root = make(base / "data", rows)
        s = settings()
        from grounding_ops.data import gx_process

        cpu_start = _cpu_seconds(resource.RUSAGE_SELF)
        validate_s, export_s, whole_s, valid = whole_prepare(annotations, root, base, s)
        prepare_cpu = _cpu_seconds(resource.RUSAGE_SELF) - cpu_start
        gx_process.close()  # waited for: its CPU time is counted in RUSAGE_CHILDREN
        gx_cpu = _cpu_seconds(resource.RUSAGE_CHILDREN)
        cpu_start = _cpu_seconds(resource.RUSAGE_SELF)
        baseline_s = baseline_write(base / "work", base, s)
        baseline_cpu = _cpu_seconds(resource.RUSAGE_SELF) - cpu_start
    print(f"[{label}] rows: {valid}")
    print(f"  validate (read + image checks + GX):      {valid / validate_s:10.0f} rows/s  ({validate_s:.1f} s)")
    print(f"  export (stats, acceptance, parquet, publish): {valid / export_s:6.0f} rows/s  ({export_s:.1f} s)")
    print(f"  whole prepare:                            {valid / whole_s:10.0f} rows/s  ({whole_s:.1f} s)")
    print(f"  baseline pyarrow.parquet.write_table:     {valid / baseline_s:10.0f} rows/s  ({baseline_s:.1f} s)")
    print(f"  whole prepare / baseline throughput:      {baseline_s / whole_s:10.2f}x")
    print(
        f"  CPU seconds: whole prepare {prepare_cpu + gx_cpu:.1f} (this process {prepare_cpu:.1f} + Great "
        f"Expectations process {gx_cpu:.1f}), baseline {baseline_cpu:.1f}: {baseline_cpu / (prepare_cpu + gx_cpu):.2f}x"
    )


def _cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def s3_fetch(objects: int) -> None:
    """The image checks' parallel S3 fetch against a plain parallel download of the same objects."""
    from concurrent.futures import ThreadPoolExecutor

    from grounding_ops import services
    from grounding_ops.data.images import ImageCheckCache, ImageResolver

    with tempfile.TemporaryDirectory(prefix="bench-s3-") as tmp:
        base = Path(tmp)
        config = services.isolated_settings(base / "services")
        services.start_s3(config)
        try:
            import boto3
            from botocore.config import Config

            workers = 32
            # one client for both sides, its connection pool as large as the thread pool
            client = boto3.client(
                "s3",
                endpoint_url=config.s3_endpoint,
                aws_access_key_id=config.s3_access_key,
                aws_secret_access_key=config.s3_secret_key,
                region_name="us-east-1",
                config=Config(max_pool_connections=workers),
            )
            client.create_bucket(Bucket=config.bucket) if config.bucket not in [
                b["Name"] for b in client.list_buckets().get("Buckets", [])
            ] else None
            _, root = make_real_size_data(base / "data", objects)
            keys = []
            for path in sorted((root / "images").iterdir()):
                key = f"bench/images/{path.name}"
                client.put_object(Bucket=config.bucket, Key=key, Body=path.read_bytes())
                keys.append(key)
            total = sum(p.stat().st_size for p in (root / "images").iterdir())

            def plain(key: str) -> int:
                return len(client.get_object(Bucket=config.bucket, Key=key)["Body"].read())

            resolver = ImageResolver(f"s3://{config.bucket}/bench", s3_client=client)

            def ours(key: str) -> int:
                data = resolver.read(key.removeprefix("bench/"), 1 << 30)
                return len(data or b"")

            def timed(fetch) -> float:
                start = time.perf_counter()
                with ThreadPoolExecutor(max_workers=workers) as pool:
                    assert sum(pool.map(fetch, keys)) == total
                return time.perf_counter() - start

            timed(plain)  # warm the endpoint and the connection pool
            rounds = [(timed(plain), timed(ours)) for _ in range(3)]  # interleaved, best of three each
            plain_s = min(p for p, _ in rounds)
            fetch_s = min(o for _, o in rounds)
            cache = ImageCheckCache(resolver, 50_000_000)
            start = time.perf_counter()
            checks = cache.get_many([k.removeprefix("bench/") for k in keys], workers=workers)
            check_s = time.perf_counter() - start
            assert all(c.ok for c in checks.values())
        finally:
            services.s3_process(config).stop()
    mib = total / 2**20
    print(f"[S3] {objects} objects, {mib:.0f} MiB, {workers} threads each")
    print(f"  plain parallel get_object:                 {mib / plain_s:8.1f} MiB/s  ({plain_s:.1f} s)")
    print(
        f"  image fetch (ImageResolver.read):          {mib / fetch_s:8.1f} MiB/s  ({fetch_s:.1f} s)  "
        f"{plain_s / fetch_s:.2f}x the plain download"
    )
    print(
        f"  image checks (fetch + decode + sha256):    {mib / check_s:8.1f} MiB/s  ({check_s:.1f} s)  "
        f"{plain_s / check_s:.2f}x the plain download"
    )


def _peak_rss_mib(pid: int | str = "self") -> float:
    """A process's own peak RSS (VmHWM). Not ``ru_maxrss``: Linux carries that over from the
    parent across fork and exec, so a child would report the benchmark parent's size."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_rss(rows: int, fmt: str) -> None:
    """Run a full prepare (validate + export + publish to a folder) and print the peak RSS."""
    from grounding_ops.data.prepare import prepare

    with tempfile.TemporaryDirectory(prefix="bench-rss-") as tmp:
        base = Path(tmp)
        annotations, root = make_data(base / "data", rows, fmt=fmt)
        if fmt == "vindr-csv":
            root = annotations.parent
        start = time.perf_counter()
        result = prepare([str(annotations)], images_root=str(root), output_uri=str(base / "out"), settings=settings())
        elapsed = time.perf_counter() - start
        assert result.counts["valid"] == rows, result.counts
    from grounding_ops.data import gx_process

    process = gx_process.running()  # Great Expectations' own process, when the input was large enough
    gx_mib = _peak_rss_mib(process.pid) if process is not None else 0.0
    peak_mib = _peak_rss_mib()
    print(
        json.dumps(
            {
                "rows": rows,
                "format": fmt,
                "peak_rss_mib": round(peak_mib + gx_mib, 1),
                "prepare_mib": round(peak_mib, 1),
                "gx_process_mib": round(gx_mib, 1),
                "seconds": round(elapsed, 1),
            }
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--rows",
        default="20000,100000",
        help="comma-separated row counts for the small-image runs (default 20000,100000)",
    )
    parser.add_argument("--real-rows", type=int, default=1000, help="rows (one 1024x1024 JPEG each; default 1000)")
    parser.add_argument("--s3-objects", type=int, default=1000, help="JPEGs for the S3 fetch run (default 1000)")
    parser.add_argument("--rss-rows", default="100000,1000000", help="comma-separated sizes for the RSS runs")
    parser.add_argument("--rss-formats", default="jsonl,coco,vindr-csv", help="readers for the RSS runs")
    parser.add_argument("--child-rss", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-throughput", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-real", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-format", default="jsonl", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_rss:
        child_rss(args.child_rss, args.child_format)
        return 0
    if args.child_throughput:
        if args.child_real:
            throughput(args.child_throughput, "1024x1024 JPEG per row", make_real_size_data)
        else:
            throughput(args.child_throughput, "small images", make_data)
        return 0
    runs = [([str(int(n))], n) for n in args.rows.split(",") if n.strip() and int(n)]
    if args.real_rows:
        runs.append(([str(args.real_rows), "--child-real"], args.real_rows))
    for extra, _ in runs:  # each in a fresh interpreter: a cold prepare, as the CLI runs it
        out = subprocess.run(
            [sys.executable, __file__, "--child-throughput", *extra], capture_output=True, text=True, check=True
        )
        print(out.stdout, end="", flush=True)
    if args.s3_objects:
        s3_fetch(args.s3_objects)
    sizes = [int(s) for s in args.rss_rows.split(",") if s.strip()]
    for fmt in [f for f in args.rss_formats.split(",") if f]:
        results = []
        for size in sizes:
            out = subprocess.run(
                [sys.executable, __file__, "--child-rss", str(size), "--child-format", fmt],
                capture_output=True,
                text=True,
                check=True,
            )
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = results[-1]
            print(
                f"peak RSS, full prepare, {fmt:>9}, {r['rows']:>8} rows: {r['peak_rss_mib']:8.1f} MiB "
                f"(prepare {r['prepare_mib']:.0f} + Great Expectations process {r['gx_process_mib']:.0f}; "
                f"{r['seconds']} s)"
            )
        if len(results) >= 2:
            small, large = results[0], results[-1]
            print(
                f"  {fmt}: rows x{large['rows'] / small['rows']:.0f} -> peak RSS "
                f"x{large['peak_rss_mib'] / small['peak_rss_mib']:.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
