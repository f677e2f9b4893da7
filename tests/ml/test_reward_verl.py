"""Our reward inside VeRL 0.9.1 itself, on CPU.

The trainer's config is composed with Hydra from VeRL's own ``ppo_trainer.yaml`` with
``reward.custom_reward_function.{path,name,reward_kwargs}`` pointing at the packaged
reward file; VeRL's ``RewardLoopWorker`` (what the trainer's ``RewardLoopManager`` runs
as Ray actors) loads it through ``get_custom_reward_fn`` and its ``naive`` reward manager
decodes token ids with ``skip_special_tokens=True`` and scores them. Rows travel through
parquet and ``datasets`` exactly as ``RLHFDataset`` reads them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("verl")
pytest.importorskip("hydra")

import torch  # noqa: E402

from grounding_ops.protocols import get_protocol  # noqa: E402
from grounding_ops.reward import VERL_REWARD_FUNCTION, score_response, verl_reward_path  # noqa: E402

pytestmark = pytest.mark.ml

SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
]
IMAGE = [640, 480]
RESIZED = [644, 476]
GT = [[64.0, 48.0, 320.0, 240.0]]


def _strip_special(text: str) -> str:
    for tok in SPECIAL:
        text = text.replace(tok, "")
    return text


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A small byte-level BPE tokenizer with Qwen's special tokens, saved as a HF folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [
        '[{"bbox_2d": [12, 34, 56, 78], "label": "a red car"}]',
        "<click>1, 2, 3, 4</click>",
        "(100,200),(300,400) locate the object in the image",
        "<think>reasoning</think><answer>[0.1]</answer>",
    ]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", additional_special_tokens=SPECIAL[3:]
    )
    out = tmp_path_factory.mktemp("tokenizer")
    fast.save_pretrained(out)
    return out


def _compose(tokenizer_dir: Path, reward_kwargs: dict | None = None):
    import verl
    from hydra import compose, initialize_config_dir

    overrides = [
        f"reward.custom_reward_function.path={verl_reward_path()}",
        f"reward.custom_reward_function.name={VERL_REWARD_FUNCTION}",
        f"actor_rollout_ref.model.path={tokenizer_dir}",
        "reward.num_workers=1",
    ]
    for key, value in (reward_kwargs or {}).items():
        overrides.append(f"+reward.custom_reward_function.reward_kwargs.{key}={value}")
    config_dir = str(Path(verl.__file__).resolve().parent / "trainer" / "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose(config_name="ppo_trainer", overrides=overrides)


RESPONSES = [
    # (protocol, response as generated, including special tokens the decoder drops)
    ("qwen2.5-vl", get_protocol("qwen2.5-vl").format_answer(GT, IMAGE, RESIZED, label="car") + "<|im_end|>"),
    ("qwen2.5-vl", '```json\n[{"bbox_2d": [100, 60, 330, 250]}, {"bbox_2d": [0, 0, 644, 476]}]\n```'),
    ("qwen2-vl", "<|object_ref_start|>car<|object_ref_end|><|box_start|>(100,100),(500,500)<|box_end|><|im_end|>"),
    ("qwen2-vl", "<|box_start|>(300,100),(700,500)<|box_end|>"),
    ("qwen3-vl", '<think>left half</think><answer>[{"bbox_2d": [100, 100, 500, 500]}]</answer>'),
    # reasoning that quotes the tags, then the final answer: only the final answer counts
    ("qwen3-vl", '<think>put it in <answer></answer></think><answer>[{"bbox_2d": [100, 100, 500, 500]}]</answer>'),
    # an exact box padded with an invalid entry: the entry counts
    ("qwen2.5-vl", '[{"bbox_2d": [64.4, 47.6, 322, 238]}, {"bbox_2d": [1, 2, 3]}]'),
    ("click-xywh", "<click>64, 48, 256, 192</click> <click>0, 0, 640, 480</click>"),
    ("click-xywh", "I do not know."),
    ("normalized-xyxy", "[0.1, 0.1, 0.5, 0.5]"),
    ("normalized-xyxy", "[0.1, 0.1, 0.5, 0.5] [0.1, 0.1, 0.5, 0.5] [0.1, 0.1, 0.5, 0.5] [0.1, 0.1, 0.5, 0.5]"),
]


@pytest.fixture(scope="module")
def exported_rows(tmp_path_factory) -> list[dict]:
    """Rows in the data export's schema, written to parquet and read back with ``datasets``."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for i, (protocol, _) in enumerate(RESPONSES):
        sizes = {"image_size": IMAGE, "resized_size": RESIZED}
        rows.append(
            {
                "data_source": "grounding/test",
                "prompt": [{"role": "user", "content": "<image>Locate the car."}],
                "ability": "grounding",
                "reward_model": {"style": "rule", "ground_truth": {"boxes": GT, "protocol": protocol, **sizes}},
                "extra_info": {
                    "split": "val",
                    "index": i,
                    "id": f"s{i}",
                    "source": "test",
                    "phrase": "car",
                    "protocol": protocol,
                    **sizes,
                },
            }
        )
    path = tmp_path_factory.mktemp("parquet") / "val.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return list(datasets.load_dataset("parquet", data_files=str(path))["train"])


def _batch(tokenizer, rows: list[dict]):
    """A rollout batch as the trainer hands it to the reward loop (left-padded prompts, right-padded responses)."""
    from verl import DataProto
    from verl.utils.dataset.rl_dataset import collate_fn

    prompt_len, response_len = 16, 160
    pad = tokenizer.pad_token_id
    samples = []
    for row, (_, response) in zip(rows, RESPONSES):
        p_ids = tokenizer.encode("<|im_start|>user locate the car<|im_end|>")[-prompt_len:]
        r_ids = tokenizer.encode(response)
        assert len(r_ids) <= response_len, "raise response_len for this response"
        prompt = torch.full((prompt_len,), pad)
        prompt[prompt_len - len(p_ids) :] = torch.tensor(p_ids)
        resp = torch.full((response_len,), pad)
        resp[: len(r_ids)] = torch.tensor(r_ids)
        mask = torch.zeros(prompt_len + response_len, dtype=torch.long)
        mask[prompt_len - len(p_ids) : prompt_len + len(r_ids)] = 1
        samples.append(
            {
                "prompts": prompt,
                "responses": resp,
                "input_ids": torch.cat([prompt, resp]),
                "attention_mask": mask,
                "data_source": row["data_source"],
                "reward_model": row["reward_model"],
                "extra_info": dict(row["extra_info"]),
            }
        )
    return DataProto.from_single_dict(collate_fn(samples))


def _expected(rows, **kwargs):
    out = []
    for row, (protocol, response) in zip(rows, RESPONSES):
        gt = row["reward_model"]["ground_truth"]
        out.append(
            score_response(
                _strip_special(response),
                gt["boxes"],
                image_size=tuple(gt["image_size"]),
                resized_size=tuple(gt["resized_size"]),
                protocol=protocol,
                **kwargs,
            )
        )
    return out


def _run_reward_loop(config, data):
    from verl.experimental.reward_loop import RewardLoopWorker
    from verl.trainer.ppo.reward import resolve_reward_manager_cls

    worker = RewardLoopWorker(config, None)  # the class RewardLoopManager runs as a Ray actor
    outputs = worker.loop.run_until_complete(worker.compute_score_batch(data))
    rm_scores = resolve_reward_manager_cls(config).assemble_rm_scores(data, [o["reward_score"] for o in outputs])
    return worker, outputs, rm_scores


def test_verl_reward_loop_scores_equal_score_response(tokenizer_dir, exported_rows):
    config = _compose(tokenizer_dir)
    assert config.reward.custom_reward_function.path == verl_reward_path()
    from verl.utils import hf_tokenizer

    tokenizer = hf_tokenizer(str(tokenizer_dir))
    data = _batch(tokenizer, exported_rows)
    worker, outputs, rm_scores = _run_reward_loop(config, data)

    # the manager decoded exactly what VeRL hands a reward function: special tokens stripped
    for (_, response), row_ids, mask in zip(RESPONSES, data.batch["responses"], data.batch["attention_mask"]):
        n = int(mask[16:].sum())
        assert tokenizer.decode(row_ids[:n], skip_special_tokens=True) == _strip_special(response)

    expected = _expected(exported_rows)
    assert [o["reward_extra_info"] for o in outputs] == expected
    assert [o["reward_score"] for o in outputs] == [e["score"] for e in expected]
    # the scalar lands on the last valid response token, as the trainer reads it
    last = data.batch["attention_mask"][:, 16:].sum(dim=1) - 1
    got = rm_scores[torch.arange(len(data)), last]
    assert torch.allclose(got, torch.tensor([e["score"] for e in expected], dtype=torch.float32))
    assert float(rm_scores.sum()) == pytest.approx(sum(e["score"] for e in expected), abs=1e-5)
    # sanity: the batch covers perfect, partial and zero rewards
    scores = [e["score"] for e in expected]
    assert max(scores) == 1.0 and min(scores) == 0.0 and any(0 < s < 1 for s in scores)
    quoted, padded = expected[5], expected[6]
    assert quoted["score"] == 1.0 and quoted["reason"] == ""
    assert padded["score"] == pytest.approx(0.5) and padded["n_pred"] == 2

    # the extra keys become VeRL's per-sample arrays and validation metrics (acc is the headline)
    from verl.trainer.ppo.metric_utils import process_validation_metrics

    keys = list(outputs[0]["reward_extra_info"])
    infos = {k: np.array([o["reward_extra_info"][k] for o in outputs]) for k in keys}
    metrics = process_validation_metrics(
        np.array(["grounding/test"] * len(data)),
        [f"u{i}" for i in range(len(data))],
        {k: v.tolist() for k, v in infos.items()},
    )
    acc_mean = metrics["grounding/test"]["acc"]["mean@1"]
    assert acc_mean == pytest.approx(np.mean([e["acc"] for e in expected]))


def test_reward_kwargs_reach_compute_score(tokenizer_dir, exported_rows):
    config = _compose(tokenizer_dir, {"max_boxes": 3, "format_weight": 0.2})
    from verl.trainer.ppo.reward import get_custom_reward_fn
    from verl.utils import hf_tokenizer

    fn = get_custom_reward_fn(config)
    gt = exported_rows[0]["reward_model"]["ground_truth"]
    r = fn(data_source="grounding/test", solution_str="nothing", ground_truth=gt, extra_info={})
    assert r["score"] == 0.0 and r["reason"]

    data = _batch(hf_tokenizer(str(tokenizer_dir)), exported_rows)
    _, outputs, _ = _run_reward_loop(config, data)
    expected = _expected(exported_rows, max_boxes=3, format_weight=0.2)
    assert [o["reward_extra_info"] for o in outputs] == expected
    assert expected[-1]["reason"] == "too_many_boxes"  # four boxes > max_boxes=3
