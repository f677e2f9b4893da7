"""The VeRL GPU path against verl 0.9.1's own code, on CPU: the V1 trainer entry point, its save
and step rules, its KL estimators, its tracking and the config keys verl never reads."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest

pytest.importorskip("verl")
pytest.importorskip("hydra")

from hydra import compose, initialize_config_dir  # noqa: E402

from grounding_ops.training.presets import PRESET_NAMES, get_preset  # noqa: E402
from grounding_ops.training.spec import KL_TYPES  # noqa: E402
from grounding_ops.training.verl_overrides import RunPaths, render_overrides  # noqa: E402

pytestmark = pytest.mark.ml


def _compose(overrides: list[str]):
    import verl

    config_dir = str(Path(verl.__file__).resolve().parent / "trainer" / "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose(config_name="ppo_trainer", overrides=overrides)


def test_the_v1_trainer_entry_point_imports_and_is_the_one_main_ppo_runs() -> None:
    import verl.trainer.main_ppo as main_ppo
    from verl.trainer.ppo.v1 import trainer_base

    assert "use_v1" in inspect.getsource(main_ppo.main) and hasattr(main_ppo, "TaskRunnerV1")
    assert hasattr(trainer_base, "PPOTrainer")
    spec = get_preset("qwen2.5-vl-3b")
    cfg = _compose(render_overrides(spec, RunPaths.for_work_dir("/tmp/w", spec)))
    assert cfg.trainer.use_v1 is True


def _verl_saves_at(save_freq: int, total_steps: int) -> list[int]:
    """verl 0.9.1's save rule (trainer/ppo/v1/trainer_base.py), checked to still read so."""
    from verl.trainer.ppo.v1 import trainer_base

    assert "self.config.trainer.save_freq > 0 and (" in inspect.getsource(trainer_base)
    return [s for s in range(1, total_steps + 1) if save_freq > 0 and (s >= total_steps or s % save_freq == 0)]


@pytest.mark.parametrize("target", [7, 30])
def test_save_only_at_the_end_saves_the_last_step(target: int, tmp_path: Path) -> None:
    spec = get_preset("qwen2.5-vl-3b").with_overrides(["save_freq=-1"])
    paths = RunPaths.for_work_dir(tmp_path, spec)
    for rendered in (render_overrides(spec, paths, target_steps=target), render_overrides(spec, paths)):
        cfg = _compose(rendered)
        steps = cfg.trainer.total_training_steps or target
        assert _verl_saves_at(cfg.trainer.save_freq, steps) == [steps]


def test_a_step_target_gets_enough_epochs(tmp_path: Path) -> None:
    spec = get_preset("qwen2.5-vl-3b").with_overrides(["total_steps=50", "total_epochs=1"])
    cfg = _compose(render_overrides(spec, RunPaths.for_work_dir(tmp_path, spec), target_steps=50))
    # verl loops while epoch < total_epochs and step <= total_training_steps: one step per epoch at worst
    assert cfg.trainer.total_training_steps == 50 and cfg.trainer.total_epochs >= 50
    # without total_steps the runner's target (from the filtered rows) is verl's own
    spec = get_preset("qwen2.5-vl-3b")
    cfg = _compose(render_overrides(spec, RunPaths.for_work_dir(tmp_path, spec), target_steps=12))
    assert cfg.trainer.total_training_steps == 12 and cfg.trainer.total_epochs == spec.total_epochs


def test_every_offered_kl_type_runs_in_verl_and_full_is_refused() -> None:
    import torch
    from verl.trainer.ppo.core_algos import kl_penalty

    logprob, ref = torch.randn(2, 5), torch.randn(2, 5)
    for name in KL_TYPES:
        assert kl_penalty(logprob, ref, kl_penalty=name).shape == (2, 5)
    with pytest.raises(NotImplementedError):
        kl_penalty(logprob, ref, kl_penalty="full")
    with pytest.raises(ValueError, match="kl_type 'full' is unknown"):
        get_preset("qwen2.5-vl-3b").with_overrides(["kl_type=full"]).validate()


def test_mlflow_logging_is_refused_on_verl_because_the_gpu_image_has_no_mlflow() -> None:
    from verl.utils import tracking

    assert "import mlflow" in inspect.getsource(tracking.Tracking.__init__)  # imported late, inside fit()
    requirements = (Path(__file__).resolve().parents[2] / "docker" / "trainer" / "constraints-verl.txt").read_text()
    assert not [line for line in requirements.splitlines() if line.lower().startswith(("mlflow==", "mlflow-skinny=="))]
    spec = get_preset("qwen2.5-vl-3b").with_overrides(["logger=console,mlflow"])
    with pytest.raises(ValueError, match="GPU image has no mlflow"):
        spec.validate()
    spec.validate(engine="cpu")  # the CPU engine logs to MLflow itself


def test_freeze_vision_tower_is_read_nowhere_so_the_spec_says_full_fine_tuning_trains_it() -> None:
    import verl

    root = Path(verl.__file__).resolve().parent
    readers = [p for p in root.rglob("*.py") if "freeze_vision_tower" in p.read_text(errors="ignore")]
    assert [p.relative_to(root).as_posix() for p in readers] == ["workers/config/actor.py"]  # the field only
    for name in PRESET_NAMES:
        spec = get_preset(name)
        assert spec.trains_vision_tower == (spec.lora_rank == 0)
    assert "vision tower included" in inspect.getsource(type(get_preset("qwen2.5-vl-3b")))


def test_multi_node_needs_a_shared_checkpoint_folder(tmp_path: Path) -> None:
    spec = get_preset("qwen2.5-vl-7b-2node")
    paths = RunPaths.for_work_dir(tmp_path, spec)
    assert Path(paths.checkpoint_dir).is_relative_to(spec.shared_dir)
    cfg = _compose(render_overrides(spec, paths))
    assert cfg.trainer.default_local_dir.startswith(spec.shared_dir)
    with pytest.raises(ValueError, match="needs shared_dir"):
        dataclasses.replace(spec, shared_dir="").validate()


def test_without_a_val_split_verl_filters_one_row_for_its_val_set(tmp_path: Path) -> None:
    spec = get_preset("qwen2.5-vl-3b")
    paths = dataclasses.replace(RunPaths.for_work_dir(tmp_path, spec), val_file=None)
    cfg = _compose(render_overrides(spec, paths))
    assert cfg.data.val_files == cfg.data.train_files
    assert cfg.data.val_max_samples == 1 and cfg.data.val_batch_size == 1
    assert cfg.trainer.val_before_train is False and cfg.trainer.test_freq == -1
