"""CPU generation throughput of the transformers evaluation engine: batch 1 vs the default batch.

Builds a tiny random Qwen2.5-VL and a synthetic validation split locally, then times
greedy generation of the same requests at batch size 1 and at the default batch size,
side by side in one run. Needs the ML environment (torch); started with another Python,
it re-runs itself with ``.venv-ml/bin/python`` when that exists.

    .venv-ml/bin/python benchmarks/evaluate.py [--samples 32] [--max-new-tokens 32]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from _ml_env import ensure_ml_python  # noqa: E402 (benchmarks/ is the script folder)


def _requests(work: Path, n: int) -> list:
    from grounding_ops.data.synthetic import publish_synthetic_version
    from grounding_ops.evaluation.evaluate import build_requests, read_samples

    uri, _ = publish_synthetic_version(
        work / "data", version="bench", n_images=max(8, n), seed=1, val_fraction=0.5, min_size=48
    )
    samples = []
    for split in ("val", "train"):
        samples += read_samples(Path(uri) / "bench" / f"{split}.parquet")
    return build_requests(samples[:n])


def main() -> int:
    ensure_ml_python()
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

    print(
        f"transformers engine on CPU ({torch.get_num_threads()} threads), tiny random Qwen2.5-VL "
        f"({parameters:,} parameters), {len(requests)} samples, greedy, "
        f"max_new_tokens={args.max_new_tokens}"
    )
    for batch_size, (rate, wall) in results.items():
        print(f"  batch {batch_size:>3}: {rate:8.2f} samples/s (generation), {wall:6.2f} s including model load")
    single, batched = results[1][0], results[args.batch_size][0]
    print(f"  batch {args.batch_size} / batch 1 throughput: {batched / single:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
