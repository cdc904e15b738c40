"""``igpo-train``: train a search agent with IGPO (or multi-turn GRPO) on an igpo env, like ``trl grpo``.

Every `IGPOConfig` / `GRPOConfig` field and every `trl.ModelConfig` field is a flag; ``--config file.yaml`` sets them
from YAML (flags given on the command line win)::

    igpo-train --config configs/cpu_tiny_synth.yaml
    igpo-train --config configs/cpu_tiny_synth.yaml --use_information_gain false --output_dir runs/grpo
    accelerate launch --config_file configs/accelerate_multi_gpu.yaml -m igpo_trainer.cli \\
        --config configs/gpu_qwen2.5_7b_paper.yaml
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class IGPOScriptArguments:
    """Which questions of the env to train on (the env owns the data) and how to start."""

    train_questions: str | None = field(
        default=None,
        metadata={
            "help": "Question indices of the env to train on, as a Python-style slice 'start:stop' (e.g. '0:500') or "
            "a comma-separated list; default: all of them."
        },
    )
    eval_questions: str | None = field(
        default=None, metadata={"help": "Question indices for evaluation during training (same syntax); default none."}
    )
    build_tiny_model: bool = field(
        default=False,
        metadata={
            "help": "If model_name_or_path does not exist yet, build a random tiny Qwen2 there first (tokenizer "
            "trained on the env's prompts and passages, `igpo_trainer.tiny`), so a CPU run needs no model hub."
        },
    )


def parse_indices(spec: str | None, n: int, what: str) -> list[int] | None:
    """'a:b' or 'i,j,k' -> indices into a list of ``n`` questions; None -> None. Errors name the bad part."""
    if spec is None:
        return None
    spec = str(spec).strip()
    try:
        if ":" in spec:
            parts = [int(p) if p.strip() else None for p in spec.split(":")]
            if len(parts) != 2:
                raise ValueError("expected start:stop")
            indices = list(range(n))[slice(*parts)]
        else:
            indices = [int(p) for p in spec.split(",") if p.strip()]
    except ValueError as exc:
        raise ValueError(f"--{what} {spec!r}: {exc}; expected 'start:stop' or 'i,j,k'") from None
    bad = [i for i in indices if not 0 <= i < n]
    if bad:
        raise ValueError(f"--{what} {spec!r}: indices {bad[:5]} out of range (the env has {n} questions)")
    if not indices:
        raise ValueError(f"--{what} {spec!r} selects no questions (the env has {n})")
    return indices


def build_tiny_for_env(env, out_dir: str, *, seed: int = 0, max_texts: int = 2000, **model_kwargs) -> Path:
    """A random tiny model whose tokenizer covers the env's prompts and the passages its questions retrieve.

    ``model_kwargs`` go to `igpo_trainer.tiny.build_tiny_model` (``hidden_size``, ``num_layers``, ``vocab_size``...).
    """
    from igpo_envs.protocol import format_observation, render_prompt
    from igpo_trainer.tiny import build_tiny_model

    base = env.unwrapped
    items = base.items[:max_texts]
    texts = [render_prompt(item.question, base.protocol, base.prompt_template) for item in items]
    if base.retriever is not None:  # the passages the policy will read
        for passages in base.retriever.search([item.question for item in items], base.topk):
            texts.append(format_observation(passages, base.protocol))
    return build_tiny_model(out_dir, texts, seed=seed, **model_kwargs)


class _RunFinished(Exception):
    """The checkpoint to resume from has already reached max_steps."""


def latest_complete_checkpoint(output_dir: str | Path) -> tuple[Path | None, list[Path]]:
    """The newest ``checkpoint-N`` of ``output_dir`` that was saved completely, and the newer ones skipped.

    The Trainer writes ``trainer_state.json`` last, so a checkpoint without a readable one was interrupted while
    saving (e.g. the job was killed) and cannot be resumed from.
    """
    import json
    import re

    numbered = []
    for path in Path(output_dir).glob("checkpoint-*"):
        match = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if match and path.is_dir():
            numbered.append((int(match.group(1)), path))
    skipped = []
    for _, path in sorted(numbered, reverse=True):
        try:
            state = json.loads((path / "trainer_state.json").read_text())
            if isinstance(state, dict) and isinstance(state.get("global_step"), int):
                return path, skipped
        except (OSError, ValueError):
            pass
        skipped.append(path)
    return None, skipped


def resolve_checkpoint(resume_from_checkpoint: str | None, output_dir: str, max_steps: int) -> str | None:
    """The checkpoint to resume from (``latest``: the newest complete one in ``output_dir``), or None.

    Raises SystemExit with a clear message if ``latest`` finds no complete checkpoint, and ``_RunFinished`` if the
    checkpoint has already reached ``max_steps``: transformers' loop checks ``max_steps`` only after a step, so
    resuming a finished run would train one step more and overwrite the saved model.
    """
    import json

    checkpoint = resume_from_checkpoint
    if checkpoint == "latest":
        found, skipped = latest_complete_checkpoint(output_dir)
        for path in skipped:
            print(f"igpo-train: skipping {path}: no readable trainer_state.json (saving it was interrupted)",
                  file=sys.stderr)
        if found is None:
            raise SystemExit(f"igpo-train: --resume_from_checkpoint latest: no complete checkpoint (a checkpoint-N "
                             f"directory with a trainer_state.json) in {output_dir}")
        checkpoint = str(found)
    if checkpoint is None or max_steps <= 0:  # epoch-based runs stop at their last epoch by themselves
        return checkpoint
    try:
        step = json.loads((Path(checkpoint) / "trainer_state.json").read_text())["global_step"]
    except (OSError, ValueError, KeyError, TypeError):
        return checkpoint  # the Trainer reports a checkpoint it cannot read
    if isinstance(step, int) and step >= max_steps:
        raise _RunFinished(f"igpo-train: {checkpoint} is at step {step} and --max_steps is {max_steps}: the run is "
                           f"finished, nothing to train (raise --max_steps to continue it)")
    return checkpoint



def quantization_config_for(model_args):
    """TRL's ``BitsAndBytesConfig`` for ``--load_in_4bit`` / ``--load_in_8bit`` (passed to the trainer, as ``trl grpo``
    does), or None; a setup where it cannot work is refused with the reason instead of silently training unquantized."""
    import importlib.util

    from trl import get_quantization_config

    config = get_quantization_config(model_args)
    if config is None:
        return None
    flag = "--load_in_4bit" if model_args.load_in_4bit else "--load_in_8bit"
    if importlib.util.find_spec("bitsandbytes") is None:
        raise SystemExit(f"igpo-train: {flag} quantizes with bitsandbytes, which is not installed "
                         "(pip install bitsandbytes; it needs a CUDA GPU)")
    import torch

    if not torch.cuda.is_available():
        raise SystemExit(f"igpo-train: {flag} needs a CUDA GPU (bitsandbytes quantization); none is available")
    if not model_args.use_peft:
        raise SystemExit(f"igpo-train: {flag} loads a quantized base model, which is trained through adapters: "
                         "add --use_peft (QLoRA)")
    return config


def make_parser():
    from trl import ModelConfig, TrlParser

    from igpo_trainer.config import IGPOConfig

    return TrlParser((IGPOScriptArguments, IGPOConfig, ModelConfig), prog="igpo-train")


def main(argv: list[str] | None = None) -> int:
    script_args, training_args, model_args = make_parser().parse_args_and_config(args=argv)
    return train(script_args, training_args, model_args)


def train(script_args, training_args, model_args) -> int:
    from trl import get_peft_config

    from igpo_trainer.trainer import IGPOTrainer, make_env, question_dataset

    if not model_args.model_name_or_path:
        raise SystemExit("igpo-train: --model_name_or_path is required (a hub id or a local model directory)")
    try:  # before anything is built: a finished run must not load, train or save anything
        checkpoint = resolve_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir,
                                        training_args.max_steps)
    except _RunFinished as finished:
        print(finished, file=sys.stderr)
        return 0
    quantization_config = quantization_config_for(model_args)
    model_init_kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": training_args.trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    training_args.model_init_kwargs = {**model_init_kwargs, **(training_args.model_init_kwargs or {})}

    env = make_env(training_args)
    if script_args.build_tiny_model and not Path(model_args.model_name_or_path).exists():
        build_tiny_for_env(env, model_args.model_name_or_path, seed=training_args.seed)
    n = len(env.unwrapped.items)
    train_indices = parse_indices(script_args.train_questions, n, "train_questions")
    eval_indices = parse_indices(script_args.eval_questions, n, "eval_questions")
    trainer = IGPOTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        env=env,
        train_dataset=question_dataset(env, train_indices),
        eval_dataset=question_dataset(env, eval_indices) if eval_indices is not None else None,
        peft_config=get_peft_config(model_args),
        quantization_config=quantization_config,
    )
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"Model saved to {training_args.output_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
