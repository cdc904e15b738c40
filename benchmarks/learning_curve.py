"""Learning benchmark: IGPO vs GRPO (and IGPO ablations) from one SFT start, several seeds, same rollouts.

    python benchmarks/learning_curve.py --seeds 0,1,2 --steps 30 --eval-every 3 --eval-episodes 64 --write BENCHMARKS.md

The SFT start is built once (the `igpo-demo` pipeline: tiny model + the warm start run to its held-out criterion,
`igpo_trainer.demo.converged_warm_start`) and every run starts from it; ``--start runs/demo`` reuses the warm start of
an `igpo-demo` run (its ``sft/`` folder). Each (method, seed) is a separate process with one torch thread (on this
shared 2-core machine two threads made tiny-model training 50-100x slower); ``--jobs`` of them run at a time.
Default 1: measured here, two runs in parallel took 7-16 s per step each against 1.6-2.2 s for one run alone, so
running them one after the other is faster.
Every ``--eval-every`` steps a run is evaluated greedily on held-out eval-split questions with
`igpo_envs.evaluation.evaluate`.
Curves and "steps to GRPO's final score" use held-out F1 (``SCORE``); EM is tabulated too.

Writes under ``--out`` (default benchmarks/results): ``learning_curve.csv`` (one row per method, seed and evaluation
step), ``learning_curve_summary.csv``, ``learning_curve.png`` (held-out EM vs step and vs training seconds, mean ±
std bands over seeds) and ``learning_curve.md``; ``--write BENCHMARKS.md`` replaces the "Learning: IGPO vs GRPO"
section there.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

#: method name -> IGPOConfig overrides (use_information_gain False = multi-turn GRPO on the same code path)
METHODS = {
    "grpo": {"use_information_gain": False},
    "igpo": {},  # the paper: prob_diff IG, joint normalisation, no guard
    "igpo_separate": {"info_gain_norm": "separate"},
    "igpo_log_prob_diff": {"info_gain_type": "log_prob_diff"},
    "igpo_std_floor": {"adv_std_floor": 0.1},
    # Sparse outcome: EM instead of F1 as the answer reward (a `DemoSettings` field, not an IGPOConfig one).
    "grpo_em": {"use_information_gain": False, "reward_metric": "em"},
    "igpo_em": {"reward_metric": "em"},
    "igpo_em_std_floor": {"reward_metric": "em", "adv_std_floor": 0.1},
    "igpo_em_separate": {"reward_metric": "em", "info_gain_norm": "separate"},
    "igpo_em_log_prob_diff": {"reward_metric": "em", "info_gain_type": "log_prob_diff"},
}
SECTION = "## Learning: IGPO vs GRPO"


def settings_for(args):
    from igpo_trainer.demo import FULL

    return replace(FULL, steps=args.steps, eval_every=args.eval_every, eval_episodes=args.eval_episodes)


def build_start(args) -> Path:
    """The shared SFT start (built once; reused if ``--start`` already holds a model)."""
    from igpo_trainer.demo import build_model, converged_warm_start

    start = Path(args.start)
    if (start / "sft" / "config.json").is_file():
        return start / "sft"
    settings = settings_for(args)
    base = build_model(start / "tiny", settings, seed=0)
    info = converged_warm_start(base, start / "sft", settings, seed=0, progress=False)
    (start / "sft_info.json").write_text(json.dumps(info, indent=1))
    return start / "sft"


def worker(args) -> None:
    """One (method, seed) run; writes its JSON."""
    import torch

    from igpo_trainer.demo import train_rl

    torch.set_num_threads(1)
    overrides = dict(METHODS[args.method])
    use_ig = overrides.pop("use_information_gain", True)
    settings = replace(settings_for(args), reward_metric=overrides.pop("reward_metric", "f1"))
    run = train_rl(Path(args.start) / "sft", Path(args.run_dir) / "trainer", settings, seed=args.seed,
                   use_information_gain=use_ig, progress=False, **overrides)
    logs = run["logs"]
    record = {
        "method": args.method, "seed": args.seed, "steps": settings.steps, "seconds": run["seconds"],
        "seconds_per_step": run["seconds"] / max(1, len(logs)), "curve": run["curve"],
        "train": [{k: h.get(k) for k in ("step", "reward", "igpo/em", "igpo/f1", "igpo/zero_adv_group_frac",
                                         "igpo/searches", "igpo/gold_recall", "igpo/format_error",
                                         "igpo/info_gain_per_search", "igpo/ig_time_share")} for h in logs],
    }
    Path(args.run_dir, "result.json").write_text(json.dumps(record, indent=1))


def start_eval(args) -> dict:
    """Held-out evaluation of the SFT start (step 0 of every curve)."""
    import torch
    from transformers import AutoModelForCausalLM

    from igpo_envs.hf_tokenizer import load_tokenizer
    from igpo_trainer.demo import evaluate_policy, headline_figures

    torch.set_num_threads(1)
    path = Path(args.start) / "sft"
    model, tokenizer = AutoModelForCausalLM.from_pretrained(path), load_tokenizer(path)
    return headline_figures(evaluate_policy(model, tokenizer, settings_for(args), episodes=args.eval_episodes))


def run_all(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs_dir = Path(args.runs_dir)
    began = time.perf_counter()
    build_start(args)
    step0 = start_eval(args)
    print(f"SFT start ready ({time.perf_counter() - began:.0f} s); held-out EM {100 * step0['em']:.1f}", flush=True)
    # IGPO vs GRPO on every seed first, then the ablations seed by seed (so a cut-short run still has the main pair)
    main_pair = [m for m in args.methods if m in ("grpo", "igpo")]
    jobs = [(m, s) for s in args.seeds for m in main_pair]
    jobs += [(m, s) for s in args.seeds for m in args.methods if m not in main_pair]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRL_EXPERIMENTAL_SILENCE": "1"}
    running: list[tuple[subprocess.Popen, str, int, float]] = []
    pending = list(jobs)
    while pending or running:
        while pending and len(running) < args.jobs:
            method, seed = pending.pop(0)
            run_dir = runs_dir / f"{method}_s{seed}"
            run_dir.mkdir(parents=True, exist_ok=True)
            if (run_dir / "result.json").is_file() and not args.rerun:
                continue
            cmd = [sys.executable, __file__, "--worker", "--method", method, "--seed", str(seed), "--start",
                   args.start, "--run-dir", str(run_dir), "--steps", str(args.steps), "--eval-every",
                   str(args.eval_every), "--eval-episodes", str(args.eval_episodes)]
            with open(run_dir / "log.txt", "w") as log:  # the child keeps its own handle
                proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
            running.append((proc, method, seed, time.perf_counter()))
        time.sleep(2)
        for entry in list(running):
            proc, method, seed, t0 = entry
            if proc.poll() is not None:
                running.remove(entry)
                status = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}, see log.txt)"
                print(f"{method} seed {seed}: {status} in {time.perf_counter() - t0:.0f} s", flush=True)
    aggregate(args, step0)


def aggregate(args, step0: dict | None = None) -> None:
    out, runs_dir = Path(args.out), Path(args.runs_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for method in args.methods:
        for seed in args.seeds:
            path = runs_dir / f"{method}_s{seed}" / "result.json"
            if path.is_file():
                results.append(json.loads(path.read_text()))
    if not results:
        raise SystemExit(f"no results under {runs_dir}")
    if step0 is None:
        step0 = start_eval(args)
    rows = [{"method": "sft_start", "seed": "-", "step": 0, "seconds": 0.0, **step0}]
    for r in results:
        rows += [{"method": r["method"], "seed": r["seed"], **c} for c in r["curve"]]
    keys = ["method", "seed", "step", "seconds", "em", "f1", "searches", "gold_recall", "format_error_rate", "turns"]
    with open(out / "learning_curve.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)

    summary = summarize(results, step0)
    with open(out / "learning_curve_summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)
    plot(results, step0, out / "learning_curve.png")
    table = summary_table(summary)
    (out / "learning_curve.md").write_text(table + "\n")
    print(table)
    if args.write:
        write_section(Path(args.write), table, summary, args)


SCORE = "f1"  # the score the curves, bands and "steps to GRPO's final" use (EM is also tabulated)


def _band(results, method, key=SCORE):
    """(steps, mean, std, seconds) of held-out ``key`` over the seeds of ``method`` (steps all seeds share)."""
    runs = [r for r in results if r["method"] == method]
    steps = sorted(set.intersection(*[{c["step"] for c in r["curve"]} for r in runs])) if runs else []
    values = np.array([[next(c[key] for c in r["curve"] if c["step"] == s) for s in steps] for r in runs])
    seconds = np.array([[next(c["seconds"] for c in r["curve"] if c["step"] == s) for s in steps] for r in runs])
    return steps, values.mean(0), values.std(0), seconds.mean(0), len(runs)


def reference_of(method: str) -> str:
    """The GRPO run a method is compared with: the one trained on the same outcome reward."""
    return "grpo_em" if METHODS.get(method, {}).get("reward_metric") == "em" else "grpo"


def summarize(results, step0) -> list[dict]:
    methods = list(dict.fromkeys(r["method"] for r in results))
    reference_finals = {}
    for reference in {reference_of(m) for m in methods} & set(methods):
        _, mean, _, _, _ = _band(results, reference, SCORE)
        reference_finals[reference] = float(mean[-1])
    summary = []
    for method in methods:
        grpo_final = reference_finals.get(reference_of(method))
        runs = [r for r in results if r["method"] == method]
        steps, em, em_std, _, n = _band(results, method, "em")
        _, f1, f1_std, _, _ = _band(results, method, "f1")
        score = f1 if SCORE == "f1" else em
        reach = next((s for s, v in zip(steps, score) if grpo_final is not None and v >= grpo_final), None)
        train = [h for r in runs for h in r["train"]]

        def avg(key, rows=train):
            vals = [h[key] for h in rows if h.get(key) is not None and math.isfinite(h[key])]
            return float(np.mean(vals)) if vals else float("nan")

        finals = [r["curve"][-1] for r in runs]
        collapsed = sum(1 for c in finals if (c.get("format_error_rate") or 0) > 0.5)
        summary.append({
            "method": method, "seeds": n, "steps": runs[0]["steps"],
            "final_em": float(em[-1]), "final_em_std": float(em_std[-1]),
            "final_f1": float(f1[-1]), "final_f1_std": float(f1_std[-1]),
            "best_em": float(em.max()), "best_f1": float(f1.max()), "start_em": step0["em"],
            "start_f1": step0["f1"],
            "steps_to_grpo_final": reach if reach is not None else "",
            "zero_adv_group_frac": avg("igpo/zero_adv_group_frac"),
            "train_searches": avg("igpo/searches"),
            "eval_searches": float(np.mean([c["searches"] for c in finals])),
            "eval_gold_recall": float(np.mean([c["gold_recall"] or 0 for c in finals])),
            "train_gold_recall": avg("igpo/gold_recall"),
            "seconds_per_step": float(np.mean([r["seconds_per_step"] for r in runs])),
            "ig_time_share": avg("igpo/ig_time_share"),
            "collapsed_runs": collapsed,
        })
    return summary


def summary_table(summary) -> str:
    def pct(x, s=None):
        if x is None or (isinstance(x, float) and math.isnan(x)):
            return "-"
        return f"{100 * x:.1f}" + (f" ± {100 * s:.1f}" if s is not None else "")

    lines = [("| method | seeds | held-out EM, final | F1, final | best F1 | steps to GRPO's final F1 (same reward) "
              "| zero-adv groups (train) | searches/ep (eval) | gold recall (eval) | s/step | IG share of step "
              "| collapsed |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in summary:
        reach = "reference" if s["method"] == reference_of(s["method"]) else s["steps_to_grpo_final"]
        lines.append(
            f"| {s['method']} | {s['seeds']} | {pct(s['final_em'], s['final_em_std'])} | "
            f"{pct(s['final_f1'], s['final_f1_std'])} | {pct(s['best_f1'])} | "
            f"{reach if reach != '' else 'not reached'}{'' if reach == 'reference' else ' / ' + str(s['steps'])} | "
            f"{pct(s['zero_adv_group_frac'])} | "
            f"{s['eval_searches']:.2f} | {pct(s['eval_gold_recall'])} | {s['seconds_per_step']:.2f} | "
            f"{pct(s['ig_time_share'])} | {s['collapsed_runs']} |")
    return "\n".join(lines)


def plot(results, step0, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(12, 4.5))
    for method in dict.fromkeys(r["method"] for r in results):
        steps, mean, std, seconds, n = _band(results, method)
        steps, seconds = [0, *steps], np.array([0.0, *seconds])
        mean, std = 100 * np.array([step0[SCORE], *mean]), 100 * np.array([0.0, *std])
        for ax, x in ((by_step, steps), (by_time, seconds)):
            ax.plot(x, mean, "o-", ms=3, label=f"{method} (n={n})")
            ax.fill_between(x, mean - std, mean + std, alpha=0.15)
    by_step.set(xlabel="RL step (same rollouts per step for every method)", ylabel=f"held-out {SCORE.upper()} (%)",
                title=f"Held-out {SCORE.upper()} vs step (mean ± std over seeds)")
    by_time.set(xlabel="training seconds (evaluation excluded)", ylabel=f"held-out {SCORE.upper()} (%)",
                title=f"Held-out {SCORE.upper()} vs wall-clock")
    for ax in (by_step, by_time):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_section(path: Path, table: str, summary, args) -> None:
    """Replace (or append) the learning section of BENCHMARKS.md, leaving other sections untouched."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    seeds = ",".join(map(str, args.seeds))
    body = (f"{SECTION}\n\n<!-- generated by benchmarks/learning_curve.py; the analysis paragraph below the marker is "
            f"written by hand -->\n\n{table}\n\nPlot: `benchmarks/results/learning_curve.png`; per-step data: "
            f"`benchmarks/results/learning_curve.csv`, summary: `benchmarks/results/learning_curve_summary.csv`.\n\n"
            f"Reproduce: `python benchmarks/learning_curve.py --start {args.start} --seeds {seeds} "
            f"--steps {args.steps} --eval-every {args.eval_every} --eval-episodes {args.eval_episodes} "
            f"--methods {','.join(args.methods)} --write BENCHMARKS.md`\n")
    if SECTION in text:
        head, rest = text.split(SECTION, 1)
        nxt = rest.find("\n## ")
        keep = ""
        marker = "<!-- analysis -->"
        section_text = rest if nxt < 0 else rest[:nxt]
        if marker in section_text:
            keep = "\n" + marker + section_text.split(marker, 1)[1].rstrip("\n") + "\n"
        tail = "" if nxt < 0 else rest[nxt:]
        text = head + body + keep + tail
    else:
        text = text.rstrip("\n") + "\n\n" + body
    path.write_text(text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--methods", default=",".join(METHODS), type=lambda s: s.split(","))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--eval-episodes", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (one torch thread each)")
    parser.add_argument("--start", default="runs/learning_curve/start", help="where the shared SFT start lives")
    parser.add_argument("--runs-dir", default="runs/learning_curve/runs")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--write", default=None, help="BENCHMARKS.md to update")
    parser.add_argument("--rerun", action="store_true", help="rerun (method, seed) pairs that already have results")
    parser.add_argument("--aggregate-only", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {list(METHODS)}")
    if args.worker:
        worker(args)
    elif args.aggregate_only:
        aggregate(args)
    else:
        run_all(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
