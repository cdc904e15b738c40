"""``igpo-demo``: the whole IGPO-vs-GRPO pipeline on a CPU, offline, in minutes.

    igpo-demo --out runs/demo              # full demo: one warm start, 3 RL seeds per method
    igpo-demo --out runs/demo --seeds 1    # a quick look: one RL seed per method
    igpo-demo --out runs/demo --quick      # CI-sized miniature (seconds)

Steps: build a tiny Qwen2 (tokenizer trained on the synthetic world's texts) → SFT warm start on scripted search
trajectories until held-out greedy behaviour meets a criterion (`igpo_trainer.warmstart.ConvergenceCriterion`) →
start-point diagnostics (`igpo_trainer.diagnostics`) → IGPO and GRPO training from that one start, ``--seeds`` RL
seeds each, the same rollouts per step → held-out evaluation of the start and of every trained policy with
`igpo_envs.evaluation.evaluate` (split="eval": start entities never seen in training) → ``results.md`` (mean ± std over
seeds), ``results.json`` (also every seed's row) and ``curves.png`` under ``--out``.

The task (`TASK`): igpo/SynthMultiHop-v0 asking one 2-hop chain, "Where was the director of <film alias> born?"
(``paths=[["director", "birthplace"]]``, ``hard_queries``): searching the question text never retrieves the film's
passage (its words pull in directors' passages instead), searching the alias always does, and the answer is stated
plainly in the director's passage. So what RL can improve is which query to issue.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

ENV_ID = "igpo/SynthMultiHop-v0"
#: Short prompt: the tiny model learns the protocol from the warm start, and short contexts keep CPU steps cheap.
PROMPT = "Question: {question}"
TASK = {"num_docs": 2000, "hops": 2, "distractors": 2, "hard_queries": True, "seed": 0,
        "paths": [["director", "birthplace"]], "prompt_template": PROMPT}
POLICIES = ("IGPO", "GRPO")
#: Figures of a held-out evaluation that the table and results.json carry.
FIGURES = ("em", "f1", "searches", "gold_recall", "format_error_rate", "turns")


@dataclass
class DemoSettings:
    """Sizes of one demo run (`FULL` and `QUICK` below)."""

    num_docs: int = 2000
    distractors: int = 2  # look-alike siblings per entity (igpo/SynthMultiHop-v0's knob)
    train_questions: int = 1000
    eval_questions: int = 200
    topk: int = 1
    max_turns: int = 4
    hidden_size: int = 128
    num_layers: int = 4
    vocab_size: int = 2048
    # Names as single tokens ("Rovi Tesan"), other words as words: copying a name off a passage is one token to copy.
    tokenizer_kind: str = "name"
    # The world's passages join the warm start as plain language modelling, so every name has a trained embedding.
    sft_read_passages: bool = True
    # Warm start: trained until held-out greedy episodes meet the criterion (checked every `sft_check_every` steps on
    # `sft_check_episodes` questions), at most `sft_max_epochs` epochs.
    sft_examples: int = 2000
    sft_max_epochs: float = 8.0
    sft_lr: float = 4e-3
    sft_batch_size: int = 8
    sft_check_every: int = 125
    sft_check_episodes: int = 64
    min_validity: float = 0.95
    min_copy_accuracy: float = 0.8
    min_query_copy: float = 0.75
    # The start must open with the alias sometimes, or RL (either method) has nothing to reinforce in 20 steps: the
    # mean probability of the alias's first word at the opening, on the checked questions.
    min_opening_share: float = 0.05
    # Once the criterion holds: steps more with the learning rate falling linearly to zero
    # (`igpo_trainer.warmstart.warm_start`), so the start settles instead of wandering between checks: a more
    # reliable reader, and an opening share that no longer swings from run to run as much (README).
    sft_anneal_steps: int = 250
    # Plan mix of the demonstrations (`igpo_trainer.warmstart.demonstrations`): mostly the naive "search the question"
    # opening, so the start rarely searches right and outcome-only GRPO meets many all-equal groups.
    naive_share: float = 0.75
    recover_share: float = 0.1
    # Share of `reading` demonstrations (oracle plan, opening search out of the loss): they teach copying names off
    # passages on most demonstrations without teaching the start policy to open with the right query.
    sft_reading_share: float = 0.5
    steps: int = 20
    rl_seeds: int = 3
    questions_per_step: int = 4
    num_generations: int = 8
    learning_rate: float = 4e-4
    max_turn_length: int = 24
    max_completion_length: int = 320
    eval_every: int = 10
    eval_episodes: int = 64
    diag_questions: int = 32
    adv_std_floor: float = 0.0
    # Outcome reward of the RL runs. EM, not the paper's F1: with F1's partial credit GRPO rarely meets an all-equal
    # group, so there is little for IG to add; with EM many of its groups collapse, the regime IGPO targets
    # (benchmarks/learning_curve.py, BENCHMARKS.md). `--reward-metric f1` for the paper's.
    reward_metric: str = "em"
    extra: dict = field(default_factory=dict)  # extra IGPOConfig fields for the IGPO run (ablations)

    def env_kwargs(self, split: str) -> dict[str, Any]:
        return {**TASK, "num_docs": self.num_docs, "distractors": self.distractors, "split": split, "topk": self.topk,
                "max_turns": self.max_turns,
                "reward_metric": self.reward_metric,
                "num_questions": self.train_questions if split == "train" else self.eval_questions}

    def criterion(self):
        from igpo_trainer.warmstart import ConvergenceCriterion

        return ConvergenceCriterion(min_validity=self.min_validity, min_copy_accuracy=self.min_copy_accuracy,
                                    min_query_copy=self.min_query_copy, min_opening_share=self.min_opening_share,
                                    check_every=self.sft_check_every,
                                    episodes=self.sft_check_episodes, max_epochs=self.sft_max_epochs)


FULL = DemoSettings()
QUICK = DemoSettings(num_docs=200, train_questions=40, eval_questions=16, hidden_size=64, num_layers=2,
                     vocab_size=600, sft_examples=192, sft_max_epochs=2.0, sft_lr=1e-2, sft_batch_size=8,
                     sft_check_every=24, sft_check_episodes=8, sft_anneal_steps=24, steps=2, rl_seeds=2,
                     questions_per_step=2, num_generations=4, eval_every=1, eval_episodes=8, diag_questions=4,
                     max_completion_length=256)


# ---------------------------------------------------------------------------------------------- evaluation agent
class PolicyAgent:
    """A causal LM as an `igpo_envs` agent that sees exactly what it saw in training: the prompt through the chat
    template, then its own turns and the observations, each piece tokenised on its own (`igpo_envs.transcript`, as
    `run_episodes` builds a rollout). Greedy by default."""

    def __init__(self, model, tokenizer, *, protocol: str = "tag", max_new_tokens: int = 32,
                 temperature: float = 0.0):
        from transformers import GenerationConfig

        from igpo_trainer.rollout import STOP_STRINGS, HFTurnGenerator

        sampling = ({"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature > 0
                    else {"do_sample": False})
        config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                  **sampling)
        self.tokenizer, self.max_new_tokens = tokenizer, max_new_tokens
        self.generate = HFTurnGenerator(model, tokenizer, config, STOP_STRINGS[protocol], [tokenizer.eos_token_id])

    def context(self, info: dict[str, Any]) -> list[int]:
        from igpo_envs.transcript import render_messages

        return render_messages(self.tokenizer, info["messages"]).ids

    def act(self, observation: str, info: dict[str, Any]) -> str:
        return self.act_batch([observation], [info])[0]

    def act_batch(self, observations, infos) -> list[str]:
        import torch

        with torch.no_grad():
            outputs = self.generate([self.context(info) for info in infos], self.max_new_tokens)
        return [self.tokenizer.decode(ids, skip_special_tokens=True) for ids, _ in outputs]


class OracleOpening:
    """The oracle's first search (the film's alias) for every question, then the policy itself.

    What the warm start's criterion measures with it is reading, apart from the choice of first query that RL is to
    learn: does the policy copy the director's name off the retrieved film passage into its next query, and the
    birthplace off the director's passage into its answer. ``first_queries`` maps question ids to that first query.
    """

    def __init__(self, policy: PolicyAgent, first_queries: dict[str, str]):
        self.policy, self.first_queries = policy, first_queries

    def act(self, observation: str, info: dict[str, Any]) -> str:
        return self.act_batch([observation], [info])[0]

    def act_batch(self, observations, infos) -> list[str]:
        actions = [f"<search> {self.first_queries[info['question_id']]} </search>" if info["turn"] == 0 else None
                   for info in infos]
        rest = [i for i, a in enumerate(actions) if a is None]
        if rest:
            acted = self.policy.act_batch([observations[i] for i in rest], [infos[i] for i in rest])
            for i, action in zip(rest, acted):
                actions[i] = action
        return actions


def evaluate_policy(model, tokenizer, settings: DemoSettings, *, episodes: int, seed: int = 0,
                    progress: bool = False, keep_episodes: bool = False,
                    oracle_opening: bool = False) -> dict[str, Any]:
    """Held-out greedy evaluation with `igpo_envs.evaluation.evaluate` on the eval split (``oracle_opening``: the
    first search is the oracle's, see `OracleOpening`)."""
    from igpo_envs.evaluation import evaluate

    was_training = model.training
    model.eval()
    try:
        agent = PolicyAgent(model, tokenizer, max_new_tokens=settings.max_turn_length)
        if oracle_opening:
            agent = OracleOpening(agent, first_queries(settings))
        return evaluate(ENV_ID, agent, episodes=episodes, seed=seed, env_kwargs=settings.env_kwargs("eval"),
                        batch_size=64, progress=progress, keep_episodes=keep_episodes)
    finally:
        model.train(was_training)


def eval_env(settings: DemoSettings):
    """The eval split's env (start entities never seen in training)."""
    from igpo_trainer.trainer import make_env_from_id

    return make_env_from_id(ENV_ID, **settings.env_kwargs("eval"))


def first_queries(settings: DemoSettings) -> dict[str, str]:
    """Question id -> the oracle's first query, for the eval split's questions."""
    return {item.id: item.metadata["oracle_queries"][0] for item in eval_env(settings).unwrapped.items}


# ---------------------------------------------------------------------------------------------- pipeline pieces
def build_model(out: Path, settings: DemoSettings, seed: int) -> Path:
    from igpo_envs.tasks.synthetic import get_world
    from igpo_trainer.tiny import build_tiny_model

    world = get_world(settings.num_docs, settings.distractors, TASK["seed"])
    return build_tiny_model(out, world.vocabulary_texts(), vocab_size=settings.vocab_size,
                            hidden_size=settings.hidden_size, num_layers=settings.num_layers, num_heads=4,
                            num_kv_heads=2, seed=seed, tokenizer_kind=settings.tokenizer_kind,
                            framing_texts=[PROMPT])


def make_train_env(settings: DemoSettings):
    from igpo_trainer.trainer import make_env_from_id

    return make_env_from_id(ENV_ID, **settings.env_kwargs("train"))


def converged_warm_start(base_dir: Path, out_dir: Path, settings: DemoSettings, *, seed: int,
                         progress: bool = True) -> dict[str, Any]:
    """`igpo_trainer.warmstart.warm_start` until the settings' criterion holds on held-out greedy episodes that open
    with the oracle's first search (`OracleOpening`; a question sample of the eval split)."""
    from igpo_envs.hf_tokenizer import load_tokenizer
    from igpo_envs.tasks.synthetic import get_world
    from igpo_trainer.warmstart import warm_start

    tokenizer = load_tokenizer(base_dir)

    def held_out(model) -> list[dict]:
        return evaluate_policy(model, tokenizer, settings, episodes=settings.sft_check_episodes, seed=10_000 + seed,
                               keep_episodes=True, oracle_opening=True)["per_episode"]

    from igpo_trainer.warmstart import opening_word_probability

    checked = eval_env(settings).unwrapped
    questions = range(min(settings.sft_check_episodes, len(checked.items)))
    prompts = [checked.reset(options={"question_index": i})[0] for i in questions]  # the env's own prompts
    oracle_openings = [f"<search> {checked.items[i].metadata['oracle_queries'][0]} </search>" for i in questions]

    def opening_share(model) -> float:
        return opening_word_probability(model, tokenizer, prompts, oracle_openings)

    passages = get_world(settings.num_docs, settings.distractors, TASK["seed"]).passages
    reading = [p.contents for p in passages] if settings.sft_read_passages else []
    return warm_start(base_dir, make_train_env(settings), out_dir, num_examples=settings.sft_examples,
                      learning_rate=settings.sft_lr, batch_size=settings.sft_batch_size,
                      naive_share=settings.naive_share, recover_share=settings.recover_share,
                      reading_share=settings.sft_reading_share, seed=seed,
                      progress=progress, evaluate=held_out, criterion=settings.criterion(), reading_texts=reading,
                      opening_share=opening_share, anneal_steps=settings.sft_anneal_steps)


def rl_config(out: Path, settings: DemoSettings, *, seed: int, use_information_gain: bool, progress: bool,
              **overrides):
    from igpo_trainer import IGPOConfig

    kwargs = settings.env_kwargs("train")
    env_kwargs = {k: v for k, v in kwargs.items() if k not in ("topk", "max_turns")}
    return IGPOConfig(
        output_dir=str(out), use_cpu=True, bf16=False, report_to="none", gradient_checkpointing=False,
        per_device_train_batch_size=settings.questions_per_step * settings.num_generations,
        num_generations=settings.num_generations, max_steps=settings.steps,
        max_completion_length=settings.max_completion_length, max_turn_length=settings.max_turn_length,
        max_turns=settings.max_turns, topk=settings.topk, env_id=ENV_ID, env_kwargs=env_kwargs,
        learning_rate=settings.learning_rate, lr_scheduler_type="constant", beta=0.0, temperature=1.0, top_k=0,
        top_p=1.0, logging_steps=1, save_strategy="no", seed=seed, disable_tqdm=not progress,
        use_information_gain=use_information_gain,
        **{"adv_std_floor": settings.adv_std_floor if use_information_gain else 0.0, **overrides},
    )


def train_rl(start_dir: Path, out: Path, settings: DemoSettings, *, seed: int, use_information_gain: bool,
             progress: bool = True, eval_seed: int = 0, **overrides) -> dict[str, Any]:
    """IGPO (``use_information_gain``) or GRPO from ``start_dir``; held-out EM/F1 every ``eval_every`` steps.

    Returns the per-step training logs, the held-out curve, seconds of training (evaluation excluded) and the model.
    """
    from transformers import TrainerCallback

    from igpo_envs.hf_tokenizer import load_tokenizer
    from igpo_trainer import IGPOTrainer

    args = rl_config(out, settings, seed=seed, use_information_gain=use_information_gain, progress=progress,
                     **{**(settings.extra if use_information_gain else {}), **overrides})
    tokenizer = load_tokenizer(start_dir)
    curve: list[dict[str, Any]] = []
    clock = {"eval": 0.0}

    class HeldOutEval(TrainerCallback):
        def on_step_end(self, _args, state, control, model=None, **kwargs):
            if state.global_step % settings.eval_every == 0 or state.global_step == settings.steps:
                begin = time.perf_counter()
                result = evaluate_policy(model, tokenizer, settings, episodes=settings.eval_episodes, seed=eval_seed)
                clock["eval"] += time.perf_counter() - begin
                curve.append({"step": state.global_step, "seconds": time.perf_counter() - clock["start"]
                              - clock["eval"], **headline_figures(result)})

    trainer = IGPOTrainer(model=str(start_dir), args=args, env=make_train_env(settings), processing_class=tokenizer,
                          callbacks=[HeldOutEval()])
    clock["start"] = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - clock["start"] - clock["eval"]
    logs = [h for h in trainer.state.log_history if "igpo/em" in h]
    return {"logs": logs, "curve": curve, "seconds": seconds, "model": trainer.model, "tokenizer": tokenizer}


def headline_figures(result: dict[str, Any]) -> dict[str, Any]:
    """The figures the demo's table reports (`FIGURES`) from an `evaluate_policy` result."""
    return {k: result.get(k) for k in FIGURES}


def _mean_log(logs: list[dict], key: str) -> float:
    values = [h[key] for h in logs if key in h and h[key] is not None and math.isfinite(h[key])]
    return sum(values) / len(values) if values else float("nan")


# ---------------------------------------------------------------------------------------------- outputs
def seed_summary(policy: str, seed_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One policy's row: the mean of every figure over its seeds, and ``<figure>_std`` (population std)."""
    row: dict[str, Any] = {"policy": policy, "seeds": len(seed_rows)}
    for key in (*FIGURES, "zero_adv_group_frac", "seconds"):
        values = [r[key] for r in seed_rows if r.get(key) is not None and math.isfinite(r[key])]
        row[key] = float(np.mean(values)) if values else float("nan")
        row[f"{key}_std"] = float(np.std(values)) if values else float("nan")
    return row


def conclusions(seed_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The claims the README makes of every run, checked on this one: IGPO >= GRPO in held-out EM on every RL seed
    (paired by seed), and the zero-advantage groups each method met in training."""
    by = {(r["policy"], r["seed"]): r for r in seed_rows}
    seeds = sorted({r["seed"] for r in seed_rows})
    paired = [(by[("IGPO", s)]["em"], by[("GRPO", s)]["em"]) for s in seeds if ("IGPO", s) in by and ("GRPO", s) in by]
    return {
        "igpo_em_ge_grpo_every_seed": bool(paired) and all(i >= g for i, g in paired),
        "igpo_em_minus_grpo_per_seed": [i - g for i, g in paired],
        "zero_adv_groups_grpo": float(np.mean([r["zero_adv_group_frac"] for r in seed_rows if r["policy"] == "GRPO"]
                                              or [float("nan")])),
        "zero_adv_groups_igpo": float(np.mean([r["zero_adv_group_frac"] for r in seed_rows if r["policy"] == "IGPO"]
                                              or [float("nan")])),
    }


def results_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of policy rows; a row with ``<figure>_std`` (several seeds) shows mean ± std."""
    def cell(r, key, pct=True, fmt="{:.2f}"):
        x = r.get(key)
        if x is None or (isinstance(x, float) and math.isnan(x)):
            return "-"
        scale, f = (100.0, "{:.1f}") if pct else (1.0, fmt)
        text = f.format(scale * x)
        std = r.get(f"{key}_std")
        if r.get("seeds", 1) > 1 and std is not None and not math.isnan(std):
            text += " ± " + f.format(scale * std)
        return text

    lines = ["| policy | seeds | EM | F1 | searches/ep | gold recall | format errors | zero-adv groups (train) | "
             "seconds |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['policy']} | {r.get('seeds', 1)} | {cell(r, 'em')} | {cell(r, 'f1')} | "
                     f"{cell(r, 'searches', False)} | {cell(r, 'gold_recall')} | {cell(r, 'format_error_rate')} | "
                     f"{cell(r, 'zero_adv_group_frac')} | {cell(r, 'seconds', False, '{:.0f}')} |")
    return "\n".join(lines)


def seed_table(seed_rows: list[dict[str, Any]]) -> str:
    lines = ["| policy | RL seed | EM | F1 | gold recall | zero-adv groups (train) |", "|---|---:|---:|---:|---:|---:|"]
    for r in seed_rows:
        lines.append(f"| {r['policy']} | {r['seed']} | {100 * r['em']:.1f} | {100 * r['f1']:.1f} | "
                     f"{100 * (r['gold_recall'] or 0):.1f} | {100 * r['zero_adv_group_frac']:.1f} |")
    return "\n".join(lines)


def plot_curves(runs: dict[str, list[dict[str, Any]]], path: Path, start: dict[str, Any]) -> None:
    """Training reward and held-out EM per step, one line per (method, seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for (name, seed_runs), color in zip(runs.items(), ("C0", "C1")):
        for k, run in enumerate(seed_runs):
            label = name if k == 0 else None
            left.plot([h["step"] for h in run["logs"]], [h.get("reward", float("nan")) for h in run["logs"]],
                      color=color, alpha=.6, label=label)
            curve = run["curve"]
            right.plot([0] + [c["step"] for c in curve], [100 * start["em"]] + [100 * c["em"] for c in curve], "o-",
                       color=color, alpha=.6, label=label)
    left.set(xlabel="step", ylabel="mean outcome reward (train batch)", title="Training reward (one line per seed)")
    right.set(xlabel="step", ylabel="held-out EM (%)", title="Held-out EM (greedy, eval split)")
    for ax in (left, right):
        ax.grid(alpha=.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _release(run: dict[str, Any]) -> dict[str, Any]:
    """A run's record without its model (kept in memory for one seed only)."""
    return {k: v for k, v in run.items() if k not in ("model", "tokenizer")}


# ---------------------------------------------------------------------------------------------- main
def rl_job(name: str, rl_seed: int, start_dir: Path, out: Path, settings: DemoSettings, held_out: int,
           progress: bool = False) -> dict[str, Any]:
    """One (method, RL seed) run from the warm start and its held-out evaluation: the row of the table, the run's
    record without its model, and the CPU seconds it took (a worker process runs one at a time)."""
    import torch

    cpu = time.process_time()
    torch.set_num_threads(1)
    run = train_rl(start_dir, out / f"{name.lower()}_s{rl_seed}", settings, seed=rl_seed,
                   use_information_gain=name == "IGPO", progress=progress)
    final = evaluate_policy(run["model"], run["tokenizer"], settings, episodes=held_out, seed=0)
    row = {"policy": name, "seed": rl_seed, **headline_figures(final), "seconds": run["seconds"],
           "zero_adv_group_frac": _mean_log(run["logs"], "igpo/zero_adv_group_frac"),
           "cpu_seconds": time.process_time() - cpu}
    return {"row": row, "run": _release(run)}


def run_rl_jobs(jobs, start_dir: Path, out: Path, settings: DemoSettings, held_out: int, *, workers: int,
                progress: bool, say) -> list[dict[str, Any]]:
    """`rl_job` for every (method, seed) of ``jobs``, in order; ``workers`` > 1 runs them in that many spawned
    processes (each one torch thread). The runs are independent and seeded, so the results do not depend on it."""
    if workers <= 1 or len(jobs) <= 1:
        results = []
        for name, rl_seed in jobs:
            say(f"{name}, RL seed {rl_seed}")
            results.append(rl_job(name, rl_seed, start_dir, out, settings, held_out, progress=progress))
        return results
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(rl_job, name, rl_seed, start_dir, out, settings, held_out) for name, rl_seed in jobs]
        results = []
        for future in futures:
            result = future.result()
            row = result["row"]
            say(f"{row['policy']}, RL seed {row['seed']}: held-out EM {100 * row['em']:.1f}%, gold recall "
                f"{100 * (row['gold_recall'] or 0):.1f}% ({row['cpu_seconds']:.0f} CPU s)")
            results.append(result)
    return results


def critical_path(serial_stages: dict[str, float], run_cpu: list[float], workers: int) -> float:
    """Seconds on the demo's critical path: the serial stages (their CPU or their wall seconds; ``rl_main_process``,
    the main process waiting on the pool, is left out), then the RL runs' CPU seconds list-scheduled over ``workers``
    cores in submission order (as the process pool runs them): the wall-clock the demo takes on idle cores."""
    finish = [0.0] * max(1, workers)
    for seconds in run_cpu:
        k = finish.index(min(finish))
        finish[k] += seconds
    serial = sum(v for k, v in serial_stages.items() if k != "rl_main_process")
    return serial + max(finish)


def run_demo(out: str | Path, *, settings: DemoSettings = FULL, seed: int = 0, progress: bool = True,
             workers: int = 1, sft_threads: int = 1) -> dict:
    """Run the pipeline; write ``results.md``, ``results.json``, ``curves.png`` under ``out``; return the results.

    ``seed`` seeds the model and the warm start; the RL runs use seeds ``0 .. settings.rl_seeds - 1``, ``workers``
    of them at a time in separate processes. ``sft_threads``: torch threads of the warm start, the one serial stage
    (the model's figures do not depend on it; `tests/test_demo.py` checks the weights).
    """
    import torch
    from transformers import AutoModelForCausalLM

    from igpo_envs.hf_tokenizer import load_tokenizer
    from igpo_trainer.diagnostics import format_diagnostics, start_diagnostics

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    timings: dict[str, float] = {}
    cpu_stages: dict[str, float] = {}  # CPU seconds of this process per stage; the RL runs' own come with them
    begin = time.perf_counter()
    cpu_begin = time.process_time()

    def say(message: str) -> None:
        if progress:
            print(f"[igpo-demo {time.perf_counter() - begin:6.1f}s] {message}", flush=True)

    say("building the tiny model (tokenizer trained on the synthetic world's texts)")
    t = time.perf_counter()
    base_dir = build_model(out / "tiny", settings, seed)
    env = make_train_env(settings)
    timings["build"] = time.perf_counter() - t
    cpu_stages["build"] = time.process_time() - cpu_begin

    say(f"SFT warm start on {settings.sft_examples} scripted trajectories (TRL SFTTrainer) until held-out greedy "
        f"episodes are valid >= {settings.min_validity:.0%}, copy answers >= {settings.min_copy_accuracy:.0%} and "
        f"names into queries >= {settings.min_query_copy:.0%} (cap {settings.sft_max_epochs:g} epochs)")
    t = time.perf_counter()
    sft_dir = out / "sft"
    threads = torch.get_num_threads()
    torch.set_num_threads(sft_threads)
    try:
        sft = converged_warm_start(base_dir, sft_dir, settings, seed=seed, progress=progress)
    finally:
        torch.set_num_threads(threads)
    timings["sft"] = time.perf_counter() - t
    cpu_stages["sft"] = time.process_time() - cpu_begin - sum(cpu_stages.values())
    if not sft["converged"]:
        say(f"warning: the warm start did not meet its criterion within {settings.sft_max_epochs:g} epochs "
            f"(last check: {sft['checks'][-1] if sft['checks'] else 'none'})")

    say("diagnostics at the RL start point")
    t = time.perf_counter()
    model, tokenizer = AutoModelForCausalLM.from_pretrained(sft_dir), load_tokenizer(sft_dir)
    diagnostics = start_diagnostics(model, tokenizer, env, num_questions=settings.diag_questions,
                                    num_generations=settings.num_generations, seed=seed,
                                    max_turn_length=settings.max_turn_length,
                                    max_completion_length=settings.max_completion_length)
    # Every eval-split question once (the split holds fewer distinct questions of this chain than eval_questions asks)
    held_out = len(first_queries(settings))
    start_eval = evaluate_policy(model, tokenizer, settings, episodes=held_out, seed=0,
                                 progress=progress)
    timings["diagnostics"] = time.perf_counter() - t
    cpu_stages["diagnostics"] = time.process_time() - cpu_begin - sum(cpu_stages.values())

    jobs = [(name, rl_seed) for rl_seed in range(settings.rl_seeds) for name in POLICIES]
    say(f"IGPO and GRPO, RL seeds 0-{settings.rl_seeds - 1}: {settings.steps} steps x {settings.questions_per_step} "
        f"questions x G={settings.num_generations} each, {len(jobs)} runs on {min(workers, len(jobs))} worker "
        f"process(es)")
    t, cpu = time.perf_counter(), time.process_time()
    results = run_rl_jobs(jobs, sft_dir, out, settings, held_out, workers=workers, progress=progress, say=say)
    timings["rl"] = time.perf_counter() - t
    cpu_stages["rl_main_process"] = time.process_time() - cpu
    seed_rows = [r["row"] for r in results]
    runs: dict[str, list[dict[str, Any]]] = {name: [r["run"] for r in results if r["row"]["policy"] == name]
                                             for name in POLICIES}
    timings["total"] = time.perf_counter() - begin
    timings["cpu_seconds"] = time.process_time() - cpu_begin
    run_cpu = [r["row"]["cpu_seconds"] for r in results]
    serial_wall = {k: timings[k] for k in ("build", "sft", "diagnostics")}
    budget = {"serial_cpu_seconds": sum(v for k, v in cpu_stages.items() if k != "rl_main_process"),
              "serial_wall_seconds": sum(serial_wall.values()), "sft_threads": sft_threads,
              "rl_run_cpu_seconds": run_cpu, "workers": min(workers, len(jobs)),
              "critical_path_cpu_seconds": critical_path(cpu_stages, run_cpu, min(workers, len(jobs))),
              # With a multi-threaded warm start its CPU seconds exceed its wall-clock: count the latter.
              "critical_path_seconds": critical_path(serial_wall, run_cpu, min(workers, len(jobs)))}

    start_row = {"policy": "SFT start", "seeds": 1, **headline_figures(start_eval), "seconds": timings["sft"],
                 "zero_adv_group_frac": diagnostics["zero_adv_frac_grpo"]}
    rows = [start_row] + [seed_summary(name, [r for r in seed_rows if r["policy"] == name]) for name in POLICIES]
    checks = conclusions(seed_rows)
    table = results_table(rows)
    plot_curves(runs, out / "curves.png", start_eval)
    report = {
        "settings": asdict(settings), "seed": seed, "held_out_questions": held_out,
        "rl_seeds": list(range(settings.rl_seeds)),
        "task": {**TASK, "distractors": settings.distractors, "env_id": ENV_ID}, "sft": sft,
        "diagnostics": diagnostics, "rows": rows,
        "seed_rows": seed_rows, "conclusions": checks, "timings": timings, "cpu_budget": budget,
        "numerics": {"ATEN_CPU_CAPABILITY": os.environ.get("ATEN_CPU_CAPABILITY", "(unset)"),
                     "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
                     "torch_threads": torch.get_num_threads(), "sft_threads": sft_threads},
        "curves": {name: [run["curve"] for run in seed_runs] for name, seed_runs in runs.items()},
        "train_logs": {name: [run["logs"] for run in seed_runs] for name, seed_runs in runs.items()},
    }
    (out / "results.json").write_text(json.dumps(report, indent=1, default=float))
    last = sft["checks"][-1] if sft.get("checks") else {}
    anneal = sft.get("anneal")
    steps_text = (f"{anneal['from_step']} steps, then annealed to step {sft['steps']} ({sft['epochs']:.1f} epochs)"
                  if anneal else f"{sft['steps']} steps ({sft['epochs']:.1f} epochs)")
    criterion_text = (f"Warm start: {'met' if sft['converged'] else 'did NOT meet'} its criterion after "
                      f"{steps_text}; last check: held-out greedy validity "
                      f"{100 * last.get('validity', float('nan')):.1f}%, answer copy "
                      f"{100 * last.get('copy_accuracy', float('nan')):.1f}%, query copy "
                      f"{100 * last.get('query_copy', float('nan')):.1f}%, opening share "
                      f"{100 * last.get('opening_share', float('nan')):.1f}% (targets {settings.min_validity:.0%}, "
                      f"{settings.min_copy_accuracy:.0%}, {settings.min_query_copy:.0%}, "
                      f">= {settings.min_opening_share:.0%}).")
    every_seed = "yes" if checks["igpo_em_ge_grpo_every_seed"] else "NO"
    verdict = (f"IGPO >= GRPO in held-out EM on every RL seed: {every_seed}"
               f" (IGPO - GRPO per seed: {', '.join(f'{100 * d:+.1f}' for d in checks['igpo_em_minus_grpo_per_seed'])}"
               " points).")
    text = (f"# igpo-demo results\n\nHeld-out: all {held_out} eval-split questions, greedy; training "
            f"{settings.steps} steps x {settings.questions_per_step} questions x G={settings.num_generations} per "
            f"method and RL seed from the same SFT start; mean ± std over {settings.rl_seeds} RL seeds; seconds = "
            f"training wall-clock (SFT for the start row).\n\n{table}\n\n{verdict}\n\n{criterion_text}\n\n"
            f"## Per seed\n\n{seed_table(seed_rows)}\n\n## RL start point\n\n{format_diagnostics(diagnostics)}\n\n"
            f"Total wall-clock: {timings['total']:.0f} s (build {timings['build']:.0f}, SFT {timings['sft']:.0f}, "
            f"diagnostics {timings['diagnostics']:.0f}, RL runs {timings['rl']:.0f}); critical path "
            f"{budget['critical_path_seconds']:.0f} s (the serial stages' wall-clock, warm start on {sft_threads} "
            f"thread(s), plus the RL runs' CPU seconds over {budget['workers']} worker(s): the wall-clock on idle "
            f"cores, process start-up aside).\n")
    (out / "results.md").write_text(text)
    if progress:
        print("\n" + table + "\n\n" + verdict + "\n" + criterion_text + "\n\n" + format_diagnostics(diagnostics))
        print(f"\nWrote {out / 'results.md'}, {out / 'results.json'}, {out / 'curves.png'} "
              f"in {timings['total']:.0f} s")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="igpo-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model and the warm start (default 0)")
    parser.add_argument("--seeds", type=int, default=None,
                        help="RL seeds per method, all from the one warm start (default 3; --quick: 2)")
    parser.add_argument("--steps", type=int, default=None, help="RL steps per run (default: 20; --quick: 2)")
    parser.add_argument("--quick", action="store_true", help="CI-sized miniature (tiny world and model, 2 steps)")
    parser.add_argument("--reward-metric", choices=("f1", "em"), default=None,
                        help="outcome reward of the RL runs (default em: sparse, where advantage collapse happens; "
                             "f1 is the paper's)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="RL runs at a time, each in its own process with one torch thread (default: 2, or 1 "
                             "on a 1-core machine); the results do not depend on it")
    parser.add_argument("--sft-threads", type=int, default=min(2, os.cpu_count() or 1),
                        help="torch threads of the warm start, the one serial stage (default: 2, or 1 on a 1-core "
                             "machine; 1 when other jobs share the cores); the results do not depend on it")
    parser.add_argument("--anneal-steps", type=int, default=None,
                        help="warm-start steps with the learning rate falling to zero once its criterion holds "
                             "(default 250; 0: stop as soon as it holds, a less reliable reader)")
    parser.add_argument("--adv-std-floor", type=float, default=None,
                        help="IGPO's group-std floor (default 0 = the paper's method)")
    args = parser.parse_args(argv)
    os.environ["HF_HUB_OFFLINE"] = "1"  # everything is built locally
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import torch

    torch.set_num_threads(1)  # tiny models: one thread is far faster than two contending ones on a shared CPU
    settings = QUICK if args.quick else FULL
    for name, value in (("steps", args.steps), ("seeds", args.seeds), ("workers", args.workers),
                        ("sft-threads", args.sft_threads)):
        if value is not None and value < 1:
            parser.error(f"--{name} must be >= 1, got {value}")
    if args.anneal_steps is not None and args.anneal_steps < 0:
        parser.error(f"--anneal-steps must be >= 0, got {args.anneal_steps}")
    if args.steps is not None:
        settings = replace(settings, steps=args.steps)
    if args.anneal_steps is not None:
        settings = replace(settings, sft_anneal_steps=args.anneal_steps)
    if args.seeds is not None:
        settings = replace(settings, rl_seeds=args.seeds)
    if args.reward_metric is not None:
        settings = replace(settings, reward_metric=args.reward_metric)
    if args.adv_std_floor is not None:
        settings = replace(settings, adv_std_floor=args.adv_std_floor)
    run_demo(args.out, settings=settings, seed=args.seed, workers=args.workers, sft_threads=args.sft_threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
