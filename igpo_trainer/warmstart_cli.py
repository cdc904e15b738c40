"""``igpo-warmstart``: SFT any causal LM on oracle search trajectories of an env whose questions carry gold evidence.

A small pretrained model does not follow the search protocol zero-shot, so RL from it sees only format penalties and
zero advantages. This command plays the oracle (search each gold evidence title, then answer; see
`igpo_trainer.demonstrations`) on the chosen training questions in the real env, renders the episodes exactly as
`igpo-train` rollouts are rendered, and fine-tunes the model on its own turns with TRL's SFTTrainer (observation and
prompt tokens masked), then saves model and tokenizer for ``igpo-train --model_name_or_path`` / ``igpo-eval --agent
hf:``::

    igpo-warmstart --model path/to/SmolLM2-135M-Instruct --env igpo/HotpotQA-Distractor-v0 --out runs/sft \\
        --train_questions 0:360 --num_examples 96 --epochs 1 --learning_rate 2e-4 --batch_size 8

Every field of `WarmStartArguments` is a flag; ``--config file.yaml`` sets them from YAML.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from igpo_envs.protocol import PROTOCOLS


@dataclass
class WarmStartArguments:
    """What to fine-tune, on which env and questions, and how long."""

    model: str = field(metadata={"help": "Causal LM to fine-tune: a local model directory or a hub id."})
    out: str = field(metadata={"help": "Directory to save the fine-tuned model and tokenizer in."})
    env: str = field(
        default="igpo/HotpotQA-Distractor-v0",
        metadata={"help": "igpo env id whose questions carry gold evidence (gold_titles or oracle_queries)."},
    )
    env_kwargs: str | None = field(
        default=None,
        metadata={"help": 'Extra gym.make arguments as a JSON object, e.g. \'{"corpus": "c.jsonl"}\' (--env-kwargs '
                  "or --env_kwargs; protocol, topk and max_turns are flags of their own)."},
    )
    protocol: str = field(
        default="tag", metadata={"help": "Action protocol of the demonstrations.", "choices": list(PROTOCOLS)}
    )
    topk: int = field(default=3, metadata={"help": "Passages per search (use the value you will train with)."})
    max_turns: int = field(default=10, metadata={"help": "Env turn limit (must exceed the evidence count)."})
    train_questions: str | None = field(
        default=None,
        metadata={"help": "Questions to demonstrate on: 'start:stop' or 'i,j,k' env indices (default: all). Keep "
                  "your evaluation questions out."},
    )
    num_examples: int | None = field(
        default=None, metadata={"help": "Demonstrations (cycling through the questions; default: each once)."}
    )
    epochs: float = field(default=1.0, metadata={"help": "SFT epochs."})
    learning_rate: float = field(default=1e-4, metadata={"help": "Peak learning rate (cosine schedule)."})
    warmup_steps: int = field(default=0, metadata={"help": "Linear learning-rate warm-up steps."})
    batch_size: int = field(default=8, metadata={"help": "Demonstrations per optimizer step."})
    seed: int = field(default=0, metadata={"help": "Seed of the question order and of training."})
    no_progress: bool = field(default=False, metadata={"help": "Hide progress bars."})


def env_make_kwargs(args: WarmStartArguments) -> dict[str, Any]:
    """``gym.make`` arguments: the protocol, topk and max_turns flags plus ``--env-kwargs`` (which may not set them
    again: one value for the env and for the demonstrations)."""
    try:
        extra = json.loads(args.env_kwargs) if args.env_kwargs else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"--env_kwargs is not valid JSON: {exc.msg} at position {exc.pos}") from None
    if not isinstance(extra, dict):
        raise ValueError(f"--env_kwargs must be a JSON object, got {type(extra).__name__}")
    duplicated = [name for name in ("protocol", "topk", "max_turns") if name in extra]
    if duplicated:
        raise ValueError(f"--env-kwargs sets {duplicated}: use the flags {', '.join(f'--{n}' for n in duplicated)}")
    return {"protocol": args.protocol, "topk": args.topk, "max_turns": args.max_turns, **extra}


def run(args: WarmStartArguments) -> dict[str, Any]:
    """Build the demonstrations, run the SFT, save to ``args.out``; returns the summary (also written as
    ``warmstart.json`` in ``args.out``)."""
    from igpo_envs.hf_tokenizer import load_tokenizer
    from igpo_trainer.cli import parse_indices
    from igpo_trainer.demonstrations import oracle_demonstrations
    from igpo_trainer.trainer import make_env_from_id
    from igpo_trainer.warmstart import warm_start

    env = make_env_from_id(args.env, **env_make_kwargs(args))
    n = len(env.unwrapped.items)
    indices = parse_indices(args.train_questions, n, "train_questions") or list(range(n))
    tokenizer = load_tokenizer(args.model)
    rows, stats = oracle_demonstrations(env, tokenizer, indices, args.num_examples, seed=args.seed)
    summary = warm_start(args.model, env, args.out, examples=rows, epochs=args.epochs,
                         learning_rate=args.learning_rate, batch_size=args.batch_size,
                         warmup_steps=args.warmup_steps, seed=args.seed, progress=not args.no_progress)
    summary = {**stats, **summary, "model": args.model, "env": args.env, "env_kwargs": env_make_kwargs(args),
               "train_questions": args.train_questions}
    Path(args.out, "warmstart.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    return summary


def main(argv: list[str] | None = None) -> int:
    from trl import TrlParser

    (args,) = TrlParser((WarmStartArguments,), prog="igpo-warmstart").parse_args_and_config(args=argv)
    try:
        summary = run(args)
    except (ValueError, RuntimeError) as exc:
        print(f"igpo-warmstart: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in summary.items() if not isinstance(v, (dict, list))}, indent=2, default=str))
    print(f"saved to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
