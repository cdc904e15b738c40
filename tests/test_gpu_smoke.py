"""GPU smoke test: two IGPO steps on a real small model from the hub (skipped, with the reason, without a GPU).

    IGPO_GPU_SMOKE_MODEL=Qwen/Qwen2.5-0.5B-Instruct python -m pytest tests/test_gpu_smoke.py -rs

It trains on the shipped HotpotQA distractor env (real questions, each with its own 10 paragraphs), so it needs no
corpus or retrieval server; the model must be downloadable or already in the Hugging Face cache.
"""

from __future__ import annotations

import math
import os

import pytest

torch = pytest.importorskip("torch")

MODEL = os.environ.get("IGPO_GPU_SMOKE_MODEL", "Qwen/Qwen2.5-0.5B-Instruct")

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason=f"GPU smoke test skipped: no CUDA GPU on this machine (it runs two IGPO steps on {MODEL})",
)


def _model_available(name: str) -> bool:
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(name)
    except OSError:
        return False
    return True


def test_two_igpo_steps_on_a_real_small_model(tmp_path):
    if not _model_available(MODEL):
        pytest.skip(f"GPU smoke test skipped: {MODEL} is neither in the Hugging Face cache nor downloadable "
                    "(HF_HUB_OFFLINE is set in tests; unset it or pre-download the model)")
    from igpo_trainer import IGPOConfig, IGPOTrainer

    args = IGPOConfig(
        output_dir=str(tmp_path / "run"),
        env_id="igpo/HotpotQA-Distractor-v0",
        bf16=torch.cuda.is_bf16_supported(),
        report_to="none",
        per_device_train_batch_size=8,
        num_generations=4,
        temperature=1.0,
        max_steps=2,
        max_completion_length=768,
        max_turn_length=128,
        max_turns=3,
        learning_rate=1e-6,
        logging_steps=1,
        save_strategy="no",
        gradient_checkpointing=True,
        seed=0,
    )
    trainer = IGPOTrainer(model=MODEL, args=args)
    # A transformer-block weight: every token's gradient reaches it (an embedding row only moves if its token is used).
    name, param = next((n, p) for n, p in trainer.model.named_parameters()
                       if p.requires_grad and p.ndim == 2 and ".layers." in n)
    before = param.detach().float().cpu().clone()
    trainer.train()
    assert trainer.state.global_step == 2
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert len(logs) == 2 and all(math.isfinite(log["loss"]) for log in logs)
    after = dict(trainer.model.named_parameters())[name].detach().float().cpu()
    # 8 sampled rollouts of 2 questions with information-gain turn rewards: a smoke run without a single non-zero
    # gradient means the rewards or advantages are broken, so both checks are unconditional.
    assert any(log.get("grad_norm", 0.0) > 0 for log in logs), f"no gradient in two IGPO steps: {logs}"
    assert not torch.equal(before, after), f"{name} did not change after two IGPO steps"
