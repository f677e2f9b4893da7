"""Reward cost: ours vs the draft guide's max-IoU regex reward, measured side by side.

1. µs per response on 10k mixed ``click-xywh`` responses (the guide's only format):
   exact, jittered, multi-box, think-wrapped, grids, prose, garbage. Both rewards
   score the same responses in the same run; the ratio is printed.
2. Our reward on the same mix written in every protocol.
3. 1 MB adversarial responses: ms per response for every protocol, with the
   default answer-length limit and with no limit (pure linear-time parsing).

Run: python benchmarks/reward.py [--n 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from grounding_ops.protocols import PROTOCOL_NAMES, get_protocol
from grounding_ops.reward import score_response
from grounding_ops.reward.adversarial import adversarial_responses
from grounding_ops.reward.baseline import guide_reward


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
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--adversarial-size", type=int, default=1 << 20)
    args = parser.parse_args(argv)

    cases = mixed_cases(args.n)
    click = render(cases, "click-xywh")
    # warm up imports (scipy) outside the timed region
    score_response(click[0], cases[0]["gt"], image_size=cases[0]["size"], protocol="click-xywh")
    score_response("<click>1,1,5,5</click><click>1,1,6,6</click>", [(1, 1, 5, 5), (2, 2, 6, 6)],
                   image_size=(10, 10), protocol="click-xywh")

    def run_guide():
        return [guide_reward(t, c["gt"]) for t, c in zip(click, cases)]

    def run_ours(texts=click, protocol="click-xywh"):
        return [score_response(t, c["gt"], image_size=c["size"], protocol=protocol)["score"]
                for t, c in zip(texts, cases)]

    t_guide = _time(run_guide, args.repeat)
    t_ours = _time(run_ours, args.repeat)
    g_scores, o_scores = run_guide(), run_ours()
    us = 1e6 / args.n
    print(f"== {args.n} mixed click-xywh responses (best of {args.repeat})")
    print(f"{'reward':<34}{'us/response':>12}{'mean reward':>13}")
    print(f"{'guide max-IoU regex':<34}{t_guide * us:>12.1f}{statistics.fmean(g_scores):>13.3f}")
    print(f"{'ours (one-to-one, click-xywh)':<34}{t_ours * us:>12.1f}{statistics.fmean(o_scores):>13.3f}")
    print(f"ratio ours/guide: {t_ours / t_guide:.2f}x")
    grid = [i for i, c in enumerate(cases) if c["kind"] == "grid"]
    print(f"grid responses ({len(grid)}): guide mean {statistics.fmean(g_scores[i] for i in grid):.3f}, "
          f"ours mean {statistics.fmean(o_scores[i] for i in grid):.3f}")

    print(f"\n== ours on the same {args.n} cases in every protocol")
    for protocol in PROTOCOL_NAMES:
        texts = render(cases, protocol)
        t = _time(lambda: run_ours(texts, protocol), args.repeat)
        print(f"{protocol:<18}{t * us:>10.1f} us/response")

    size = args.adversarial_size
    print(f"\n== adversarial responses of {size / (1 << 20):.2f} MB: ms per response (best of {args.repeat})")
    adv = adversarial_responses(size)
    gt = [(1.0, 2.0, 3.0, 4.0)]
    header = f"{'protocol':<18}{'limit':>10}{'worst ms':>10}  {'worst input':<20}{'median ms':>10}"
    print(header)
    for protocol in PROTOCOL_NAMES:
        for limit in (65_536, None):
            times = {}
            for name, text in adv.items():
                times[name] = 1000 * _time(
                    lambda: score_response(text, gt, image_size=(100, 100), protocol=protocol, max_answer_chars=limit),
                    args.repeat,
                )
            worst = max(times, key=times.get)
            print(f"{protocol:<18}{str(limit):>10}{times[worst]:>10.2f}  {worst:<20}"
                  f"{statistics.median(times.values()):>10.2f}")
    g_times = {name: 1000 * _time(lambda: guide_reward(text, gt), args.repeat) for name, text in adv.items()}
    worst = max(g_times, key=g_times.get)
    print(f"{'guide (click only)':<18}{'none':>10}{g_times[worst]:>10.2f}  {worst:<20}"
          f"{statistics.median(g_times.values()):>10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
