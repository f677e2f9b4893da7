"""Throughput and memory of ``grounding-ops prepare`` on synthetic annotations over small images.

Prints rows/s for validation (readers + image checks + Great Expectations) and for export
(split + VeRL rows + parquet row groups), next to a baseline in the same run: plain
``pyarrow.parquet.write_table`` of the same rows built in memory. Then the peak RSS of a
full prepare at two sizes (each in its own subprocess), which must not grow in proportion
to the number of rows.

    python benchmarks/prepare.py                 # 100k rows; RSS at 100k and 1M
    python benchmarks/prepare.py --rows 20000 --rss-rows 20000,200000   # quick
"""

from __future__ import annotations

import argparse
import json
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


def make_data(folder: Path, rows: int, seed: int = 0) -> tuple[Path, Path]:
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
    annotations = folder / "annotations.jsonl"
    with open(annotations, "w") as handle:
        for r in range(rows):
            i = r % N_IMAGES
            width, height, drawn = shapes[i]
            color, shape, box = drawn[r % len(drawn)]
            handle.write(json.dumps({"id": f"r{r}", "image": f"images/{i:04d}.png", "phrase": f"the {color} {shape}",
                                     "boxes": [box], "width": width, "height": height, "source": "bench",
                                     "group": f"p{r % 5000}"}) + "\n")
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
            rows.append(build_row(
                record_id=row["id"], source=row["source"], phrase=row["phrase"], boxes=row["boxes"], image_bytes=data,
                image_size=size, resized_size=smart_resize(*size, min_pixels=prepare_settings.min_pixels,
                                                           max_pixels=prepare_settings.max_pixels),
                prompt=build_prompt(row["phrase"], prepare_settings.protocol), protocol=prepare_settings.protocol,
                split="train", index=index, min_pixels=prepare_settings.min_pixels,
                max_pixels=prepare_settings.max_pixels))
    pq.write_table(pa.Table.from_pylist(rows, schema=verl_schema()), out / "baseline.parquet", compression="zstd")
    return time.perf_counter() - start


def throughput(rows: int) -> None:
    from grounding_ops.data.images import ImageResolver
    from grounding_ops.data.prepare import validate_inputs, write_parquet

    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as tmp:
        base = Path(tmp)
        annotations, root = make_data(base / "data", rows)
        s = settings()
        start = time.perf_counter()
        summary = validate_inputs([str(annotations)], images_root=str(root), settings=s, work_dir=base / "work")
        validate_s = time.perf_counter() - start
        assert summary.counts["valid"] == rows, summary.counts
        (base / "export").mkdir()
        start = time.perf_counter()
        write_parquet(base / "work", base / "export", s, ImageResolver(root))
        export_s = time.perf_counter() - start
        baseline_s = baseline_write(base / "work", base / "export", s)
    print(f"rows: {rows}")
    print(f"validate (read + image checks + GX):  {rows / validate_s:10.0f} rows/s  ({validate_s:.1f} s)")
    print(f"export (row groups, ParquetWriter):   {rows / export_s:10.0f} rows/s  ({export_s:.1f} s)")
    print(f"baseline pyarrow.parquet.write_table: {rows / baseline_s:10.0f} rows/s  ({baseline_s:.1f} s)")
    print(f"export / baseline throughput ratio:   {baseline_s / export_s:10.2f}")


def child_rss(rows: int) -> None:
    """Run a full prepare (validate + export + publish to a folder) and print the peak RSS."""
    from grounding_ops.data.prepare import prepare

    with tempfile.TemporaryDirectory(prefix="bench-rss-") as tmp:
        base = Path(tmp)
        annotations, root = make_data(base / "data", rows)
        start = time.perf_counter()
        result = prepare([str(annotations)], images_root=str(root), output_uri=str(base / "out"), settings=settings())
        elapsed = time.perf_counter() - start
        assert result.counts["valid"] == rows
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rows": rows, "peak_rss_mib": round(peak_mib, 1), "seconds": round(elapsed, 1)}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000, help="rows for the throughput run (default 100000)")
    parser.add_argument("--rss-rows", default="100000,1000000", help="comma-separated sizes for the RSS runs")
    parser.add_argument("--child-rss", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_rss:
        child_rss(args.child_rss)
        return 0
    throughput(args.rows)
    sizes = [int(s) for s in args.rss_rows.split(",") if s.strip()]
    results = []
    for size in sizes:
        out = subprocess.run([sys.executable, __file__, "--child-rss", str(size)], capture_output=True, text=True,
                             check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = results[-1]
        print(f"peak RSS, full prepare of {r['rows']:>8} rows: {r['peak_rss_mib']:8.1f} MiB ({r['seconds']} s)")
    if len(results) >= 2:
        small, large = results[0], results[-1]
        print(f"rows x{large['rows'] / small['rows']:.0f} -> peak RSS x{large['peak_rss_mib'] / small['peak_rss_mib']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
