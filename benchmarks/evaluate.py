"""CPU generation throughput of the transformers evaluation engine: batch 1 vs the default batch.

Builds a tiny random Qwen2.5-VL and a synthetic validation split locally, then times
greedy generation of the same requests at batch size 1 and at the default batch size,
side by side in one run. Needs the ML environment (torch); started with another Python,
it re-runs itself with ``.venv-ml/bin/python`` when that exists.

    .venv-ml/bin/python benchmarks/evaluate.py [--samples 32] [--max-new-tokens 32]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _ensure_ml_python() -> None:
    if importlib.util.find_spec("torch") is not None:
        return
    ml_python = REPO / ".venv-ml" / "bin" / "python"
    if ml_python.exists() and Path(sys.prefix).resolve() != ml_python.parent.parent.resolve():
        os.execv(str(ml_python), [str(ml_python), *sys.argv])
    sys.exit("this benchmark needs torch: run it with the ML environment (.venv-ml/bin/python, `make setup-ml`)")


def _requests(work: Path, n: int) -> list:
    from grounding_ops.data.images import ImageResolver
    from grounding_ops.data.prepare import VALID, PrepareSettings, valid_row, write_parquet
    from grounding_ops.data.readers import read_records
    from grounding_ops.data.synthetic import generate_synthetic
    from grounding_ops.evaluation.evaluate import build_requests, read_samples
    from grounding_ops.tiny_models import MAX_PIXELS, MIN_PIXELS

    data = generate_synthetic(work / "syn", n_images=max(8, n), seed=1, min_size=48, max_size=140)
    settings = PrepareSettings(protocol="qwen2.5-vl", val_fraction=0.5, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    resolver = ImageResolver(data.images_root)
    (work / "work").mkdir()
    with open(work / "work" / VALID, "w") as handle:
        for record in read_records(data.annotations):
            check = resolver.check(record.image, settings.max_image_pixels)
            handle.write(json.dumps(valid_row(record, record.boxes, check)) + "\n")
    (work / "export").mkdir()
    write_parquet(work / "work", work / "export", settings, resolver)
    samples = []
    for split in ("val", "train"):
        samples += read_samples(work / "export" / f"{split}.parquet")
    return build_requests(samples[:n])


def main() -> int:
    _ensure_ml_python()
    import torch

    from grounding_ops.evaluation.generate import DEFAULT_BATCH_SIZE, generate_transformers
    from grounding_ops.tiny_models import build_tiny_model, count_parameters

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="the batched run's size")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-evaluate-") as tmp:
        work = Path(tmp)
        model = build_tiny_model(work / "model", family="qwen2.5-vl", seed=0)
        parameters = count_parameters(model)
        requests = _requests(work, args.samples)
        # warm-up: first-call costs (kernel selection, lazy imports) out of the timings
        generate_transformers(model, requests[:2], batch_size=2, max_new_tokens=4)
        results = {}
        for batch_size in (1, args.batch_size):
            started = time.perf_counter()
            output = generate_transformers(model, requests, batch_size=batch_size, max_new_tokens=args.max_new_tokens)
            results[batch_size] = (output.samples_per_s, time.perf_counter() - started)

    print(f"transformers engine on CPU ({torch.get_num_threads()} threads), tiny random Qwen2.5-VL "
          f"({parameters:,} parameters), {len(requests)} samples, greedy, "
          f"max_new_tokens={args.max_new_tokens}")
    for batch_size, (rate, wall) in results.items():
        print(f"  batch {batch_size:>3}: {rate:8.2f} samples/s (generation), {wall:6.2f} s including model load")
    single, batched = results[1][0], results[args.batch_size][0]
    print(f"  batch {args.batch_size} / batch 1 throughput: {batched / single:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
