"""Reward cost: ours vs the draft guide's max-IoU regex reward, measured side by side.

1. Single-box responses, the VeRL path: µs per response of ``compute_score`` with the
   exported ground-truth dict (one dict object per prompt shared by its rollouts, an
   equal copy per rollout, or a different row per response) for every protocol, next
   to the guide's regex reward on the same boxes written as ``<click>``. CPU time, min
   of interleaved rounds; the ratio to the guide is printed.
2. 10k mixed ``click-xywh`` responses (the guide's only format): exact, jittered,
   multi-box, think-wrapped, grids, prose, garbage; ours through ``score_response`` and
   ``compute_score``, the guide on the same responses; the ratio is printed.
3. Our reward on the same mix written in every protocol.
4. 1 MB adversarial responses: ms per response for every protocol, with the
   default answer-length limit and with no limit (pure linear-time parsing).

``--profile`` prints a cProfile of the single-box VeRL path instead.

Run: python benchmarks/reward.py [--n 10000] [--rounds 5] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import statistics
import time

from grounding_ops.protocols import PROTOCOL_NAMES, get_protocol
from grounding_ops.reward import compute_score, score_response
from grounding_ops.reward import scoring as _scoring
from grounding_ops.reward.adversarial import adversarial_responses
from grounding_ops.reward.baseline import guide_reward

ROLLOUTS = 8  # responses per prompt sharing one ground-truth dict (GRPO's rollout.n)


def _box(rng: random.Random, w: int, h: int) -> tuple[float, float, float, float]:
    x1, y1 = rng.uniform(0, w * 0.8), rng.uniform(0, h * 0.8)
    return (x1, y1, rng.uniform(x1 + 4, w), rng.uniform(y1 + 4, h))


def _jitter(rng: random.Random, box, scale: float):
    x1, y1, x2, y2 = box
    dw, dh = (x2 - x1) * scale, (y2 - y1) * scale
    return (x1 + rng.uniform(-dw, dw), y1 + rng.uniform(-dh, dh), x2 + rng.uniform(-dw, dw), y2 + rng.uniform(-dh, dh))


def mixed_cases(n: int, seed: int = 0) -> list[dict]:
    """``n`` cases: image size, ground truth and predicted pixel boxes (or raw text)."""
    rng = random.Random(seed)
    cases = []
    for _ in range(n):
        w, h = rng.randint(200, 2000), rng.randint(200, 2000)
        gt = [_box(rng, w, h) for _ in range(rng.choice([1, 1, 1, 2, 3]))]
        kind = rng.choices(
            ["exact", "jitter", "multi", "think", "grid", "prose", "garbage"], [20, 30, 15, 10, 5, 10, 10]
        )[0]
        pred: list = []
        text = None
        if kind == "exact":
            pred = list(gt)
        elif kind == "jitter":
            pred = [_jitter(rng, b, 0.15) for b in gt]
        elif kind == "multi":
            pred = [_jitter(rng, b, 0.1) for b in gt] + [_box(rng, w, h) for _ in range(rng.randint(1, 4))]
        elif kind == "grid":
            k = rng.randint(3, 8)
            pred = [(i * w / k, j * h / k, (i + 1) * w / k, (j + 1) * h / k) for i in range(k) for j in range(k)]
        elif kind == "garbage":
            text = "".join(rng.choice("abc ,.[](){}<>0123456789") for _ in range(rng.randint(0, 300)))
        else:
            pred = [_jitter(rng, b, 0.1) for b in gt]
        cases.append({"size": (w, h), "gt": gt, "pred": pred, "text": text, "kind": kind})
    return cases


def render(cases: list[dict], protocol: str) -> list[str]:
    proto = get_protocol(protocol)
    out = []
    for c in cases:
        if c["text"] is not None:
            out.append(c["text"])
            continue
        body = proto.format_answer(c["pred"], c["size"], label="object") if c["pred"] else ""
        if c["kind"] == "think":
            body = "<think>The object is probably near the centre of the image.</think><answer>" + body + "</answer>"
        elif c["kind"] == "prose":
            body = "Sure. Looking at the image, I found it here: " + body + " Let me know if you need more."
        out.append(body)
    return out


def _time(fn, repeat: int) -> float:
    """Min CPU seconds of this process over ``repeat`` runs."""
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def _interleaved(contenders: dict, rounds: int, before=None) -> dict[str, float]:
    """Min CPU seconds per contender over ``rounds`` rounds, each round timing every
    contender once (CPU time of this process: a busy machine inflates both sides less)."""
    best = {name: float("inf") for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            if before is not None:
                before()
            start = time.process_time()
            fn()
            best[name] = min(best[name], time.process_time() - start)
    return best


def _exported_truth(protocol: str, box, size, resized) -> dict:
    """``reward_model.ground_truth`` as the data export writes it and ``datasets`` reads it back."""
    return {
        "boxes": [[float(v) for v in box]],
        "protocol": protocol,
        "image_size": [int(size[0]), int(size[1])],
        "resized_size": [int(resized[0]), int(resized[1])],
    }


def single_box_cases(n: int, seed: int = 1) -> list[dict]:
    """``n`` single-object rows, ``ROLLOUTS`` rollouts each: a jittered box per rollout."""
    rng = random.Random(seed)
    cases = []
    for i in range(0, n, ROLLOUTS):
        w, h = rng.randint(200, 2000), rng.randint(200, 2000)
        resized = (max(28, round(w * 0.5 / 28) * 28), max(28, round(h * 0.5 / 28) * 28))
        gt = _box(rng, w, h)
        for _ in range(min(ROLLOUTS, n - i)):
            cases.append({"size": (w, h), "resized": resized, "gt": gt, "pred": _jitter(rng, gt, 0.15), "group": i})
    return cases


def single_box_section(n: int, rounds: int) -> None:
    """The VeRL path on single-box answers, for the ways VeRL hands over the ground truth:
    one dict object per prompt (a batch, ``repeat`` shares it), an equal copy per rollout
    (sample-by-sample scoring unpickles each), and a different row per response (no reuse:
    ``rollout.n = 1``)."""
    cases = single_box_cases(n)
    click = [get_protocol("click-xywh").format_answer([c["pred"]], c["size"]) for c in cases]
    gts = [[c["gt"]] for c in cases]
    contenders = {"guide max-IoU regex (click)": lambda: [guide_reward(t, g) for t, g in zip(click, gts)]}
    for protocol in PROTOCOL_NAMES:
        proto = get_protocol(protocol)
        texts = [proto.format_answer([c["pred"]], c["size"], c["resized"], label="object") for c in cases]
        shared: dict[int, dict] = {}
        rows = {
            "shared dict": [
                shared.setdefault(c["group"], _exported_truth(protocol, c["gt"], c["size"], c["resized"]))
                for c in cases
            ]
        }
        if protocol in ("qwen2.5-vl", "click-xywh"):
            rows["equal copy"] = [_exported_truth(protocol, c["gt"], c["size"], c["resized"]) for c in cases]
            rng = random.Random(2)
            rows["no reuse"] = [
                _exported_truth(protocol, _jitter(rng, c["gt"], 0.01), c["size"], c["resized"]) for c in cases
            ]
        for how, these in rows.items():

            def run(texts=texts, rows=these):
                return [compute_score("grounding/bench", t, r, None) for t, r in zip(texts, rows)]

            contenders[f"compute_score {protocol}, {how}"] = run
    for fn in contenders.values():  # imports, caches of the regex module
        fn()
    best = _interleaved(contenders, rounds, before=_scoring._TARGET_CACHE.clear)
    guide = best["guide max-IoU regex (click)"]
    us = 1e6 / n
    print(
        f"== {n} single-box responses, the VeRL path (CPU time, min of {rounds} interleaved rounds; "
        f"{ROLLOUTS} rollouts per prompt)"
    )
    print(f"{'reward':<48}{'us/response':>12}{'x guide':>9}")
    for name, t in best.items():
        print(f"{name:<48}{t * us:>12.2f}{t / guide:>9.2f}")


def profile_single_box(n: int) -> None:
    cases = single_box_cases(n)
    texts = [
        get_protocol("qwen2.5-vl").format_answer([c["pred"]], c["size"], c["resized"], label="object") for c in cases
    ]
    shared: dict[int, dict] = {}
    rows = [
        shared.setdefault(c["group"], _exported_truth("qwen2.5-vl", c["gt"], c["size"], c["resized"])) for c in cases
    ]
    _scoring._TARGET_CACHE.clear()
    profiler = cProfile.Profile()
    profiler.enable()
    for t, r in zip(texts, rows):
        compute_score("grounding/bench", t, r, None)
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(12)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the minimum is reported")
    parser.add_argument("--adversarial-size", type=int, default=1 << 20)
    parser.add_argument("--profile", action="store_true", help="cProfile the single-box VeRL path and stop")
    args = parser.parse_args(argv)
    if args.profile:
        profile_single_box(args.n)
        return 0

    single_box_section(args.n, args.rounds)

    cases = mixed_cases(args.n)
    click = render(cases, "click-xywh")
    rows = [
        _exported_truth("click-xywh", (0, 0, 1, 1), c["size"], c["size"]) | {"boxes": [list(b) for b in c["gt"]]}
        for c in cases
    ]

    def run_guide():
        return [guide_reward(t, c["gt"]) for t, c in zip(click, cases)]

    def run_ours(texts=click, protocol="click-xywh"):
        return [
            score_response(t, c["gt"], image_size=c["size"], protocol=protocol)["score"] for t, c in zip(texts, cases)
        ]

    def run_verl():
        return [compute_score("grounding/bench", t, r, None)["score"] for t, r in zip(click, rows)]

    run_guide(), run_ours(), run_verl()  # warm up imports (scipy) outside the timed region
    best = _interleaved(
        {"guide": run_guide, "ours": run_ours, "verl": run_verl}, args.rounds, before=_scoring._TARGET_CACHE.clear
    )
    g_scores, o_scores = run_guide(), run_ours()
    us = 1e6 / args.n
    print(f"\n== {args.n} mixed click-xywh responses (CPU time, min of {args.rounds} interleaved rounds)")
    print(f"{'reward':<46}{'us/response':>12}{'x guide':>9}{'mean reward':>13}")
    print(f"{'guide max-IoU regex':<46}{best['guide'] * us:>12.2f}{1.0:>9.2f}{statistics.fmean(g_scores):>13.3f}")
    print(
        f"{'ours, score_response':<46}{best['ours'] * us:>12.2f}{best['ours'] / best['guide']:>9.2f}"
        f"{statistics.fmean(o_scores):>13.3f}"
    )
    print(f"{'ours, compute_score (a dict per row)':<46}{best['verl'] * us:>12.2f}{best['verl'] / best['guide']:>9.2f}")
    grid = [i for i, c in enumerate(cases) if c["kind"] == "grid"]
    print(
        f"grid responses ({len(grid)}): guide mean {statistics.fmean(g_scores[i] for i in grid):.3f}, "
        f"ours mean {statistics.fmean(o_scores[i] for i in grid):.3f}"
    )

    print(f"\n== ours (score_response) on the same {args.n} cases in every protocol")
    for protocol in PROTOCOL_NAMES:
        texts = render(cases, protocol)
        t = _time(lambda texts=texts, protocol=protocol: run_ours(texts, protocol), args.rounds)
        print(f"{protocol:<18}{t * us:>10.2f} us/response")

    size = args.adversarial_size
    repeat = 3
    print(f"\n== adversarial responses of {size / (1 << 20):.2f} MB: ms per response (best of {repeat})")
    adv = adversarial_responses(size)
    gt = [(1.0, 2.0, 3.0, 4.0)]
    header = f"{'protocol':<18}{'limit':>10}{'worst ms':>10}  {'worst input':<22}{'median ms':>10}"
    print(header)
    for protocol in PROTOCOL_NAMES:
        for limit in (65_536, None):
            times = {}
            for name, text in adv.items():
                times[name] = 1000 * _time(
                    lambda text=text, protocol=protocol, limit=limit: score_response(
                        text, gt, image_size=(100, 100), protocol=protocol, max_answer_chars=limit
                    ),
                    repeat,
                )
            worst = max(times, key=times.get)
            print(
                f"{protocol:<18}{str(limit):>10}{times[worst]:>10.2f}  {worst:<22}"
                f"{statistics.median(times.values()):>10.2f}"
            )
    g_times = {name: 1000 * _time(lambda text=text: guide_reward(text, gt), repeat) for name, text in adv.items()}
    worst = max(g_times, key=g_times.get)
    print(
        f"{'guide (click only)':<18}{'none':>10}{g_times[worst]:>10.2f}  {worst:<22}"
        f"{statistics.median(g_times.values()):>10.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
