"""igpo-train --resume_from_checkpoint: `latest` skips checkpoints whose saving was interrupted, and resuming a
finished run trains nothing (transformers' loop checks max_steps only after a step, so it trained one more)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from igpo_trainer.cli import latest_complete_checkpoint, main, resolve_checkpoint

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def checkpoint(out: Path, step: int, state: str | None = '{"global_step": STEP}') -> Path:
    path = out / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"weights")
    if state is not None:
        (path / "trainer_state.json").write_text(state.replace("STEP", str(step)))
    return path


def test_latest_is_the_newest_complete_checkpoint(tmp_path):
    checkpoint(tmp_path, 2)
    checkpoint(tmp_path, 10)  # numeric order, not string order
    checkpoint(tmp_path, 12, state=None)  # killed before trainer_state.json was written
    checkpoint(tmp_path, 11, state='{"global_st')  # killed while writing it
    (tmp_path / "checkpoint-13").write_text("a file, not a checkpoint")
    found, skipped = latest_complete_checkpoint(tmp_path)
    assert found == tmp_path / "checkpoint-10"
    assert skipped == [tmp_path / "checkpoint-12", tmp_path / "checkpoint-11"]
    assert resolve_checkpoint("latest", str(tmp_path), max_steps=20) == str(tmp_path / "checkpoint-10")


def test_latest_without_a_complete_checkpoint_is_a_clear_error(tmp_path, capsys):
    checkpoint(tmp_path, 3, state=None)
    with pytest.raises(SystemExit, match="no complete checkpoint .*trainer_state.json"):
        resolve_checkpoint("latest", str(tmp_path), max_steps=5)
    assert "skipping" in capsys.readouterr().err


def test_resuming_a_finished_run_is_refused_before_anything_is_built(tmp_path, capsys):
    checkpoint(tmp_path / "run", 4)
    args = ["--model_name_or_path", str(tmp_path / "no-model-needed"), "--output_dir", str(tmp_path / "run"),
            "--max_steps", "4", "--use_cpu", "true", "--bf16", "false", "--report_to", "none"]
    assert main([*args, "--resume_from_checkpoint", "latest"]) == 0
    assert "is at step 4 and --max_steps is 4: the run is finished" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoint-4"]  # nothing trained or saved
    # an explicit checkpoint directory is checked the same way; a larger max_steps resumes
    assert main([*args, "--resume_from_checkpoint", str(tmp_path / "run" / "checkpoint-4")]) == 0
    assert resolve_checkpoint("latest", str(tmp_path / "run"), max_steps=5) == str(tmp_path / "run" / "checkpoint-4")


@pytest.mark.slow
def test_resume_of_a_finished_run_keeps_the_model_and_latest_skips_a_killed_save(tmp_path):
    """End to end: before, this trained step 2 (checkpoint-2 appeared) and rewrote the saved model."""
    model_dir, out = tmp_path / "model", tmp_path / "run"
    common = ["--config", os.path.join(CONFIGS, "cpu_tiny_synth.yaml"), "--model_name_or_path", str(model_dir),
              "--output_dir", str(out), "--env_kwargs", '{"num_docs": 60, "hops": 1, "num_questions": 8}',
              "--per_device_train_batch_size", "8", "--num_generations", "4", "--save_steps", "1",
              "--max_completion_length", "32", "--max_turn_length", "16", "--max_turns", "2", "--max_steps", "1"]
    assert main(common) == 0
    saved = (out / "model.safetensors").read_bytes()
    killed = shutil.copytree(out / "checkpoint-1", out / "checkpoint-7")
    (killed / "trainer_state.json").unlink()  # a later save that was interrupted
    assert main([*common, "--resume_from_checkpoint", "latest"]) == 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-7"]
    assert (out / "model.safetensors").read_bytes() == saved
    state = json.loads((out / "checkpoint-1" / "trainer_state.json").read_text())
    assert state["global_step"] == 1
