"""The demo's figures as ranges over CPU numerics and warm-start seeds (what README's "CPU reproduction" reports).

    python benchmarks/demo_ranges.py --capabilities avx2,avx512,default --seeds 0,1
    python benchmarks/demo_ranges.py --runs avx2:0,avx512:0,default:0,avx512:1   # chosen (numerics, seed) pairs
    python benchmarks/demo_ranges.py --aggregate-only      # re-tabulate runs already under --runs-dir

Floating-point reduction order differs between CPU kernel families, so one seeded demo gives different figures on
different machines. ``ATEN_CPU_CAPABILITY`` makes this machine use another family's kernels (``default`` = no
vectorisation), so it imitates other machines. Each (capability, warm-start seed) is one full ``igpo-demo`` run in its
own process (``--seed`` = the warm-start seed; every run trains its RL seeds from its own warm start). The table gives,
per policy and figure, the range of the per-run means over all runs, and says which of the README's conclusions held
on every run. Writes ``demo_ranges.md`` and ``demo_ranges.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

FIGURES = (("EM", "em"), ("F1", "f1"), ("gold recall", "gold_recall"), ("searches/ep", "searches"),
           ("zero-adv groups (train)", "zero_adv_group_frac"))


def chosen_runs(args) -> list[tuple[str, int]]:
    """(capability, warm-start seed) pairs: ``--runs`` if given, else every capability with every seed."""
    if args.runs:
        pairs = []
        for text in args.runs.split(","):
            cap, sep, seed = text.partition(":")
            if not sep or not seed.strip().isdigit():
                raise SystemExit(f"--runs: expected capability:seed pairs like avx2:0, got {text!r}")
            pairs.append((cap.strip(), int(seed)))
        return pairs
    return [(cap, seed) for seed in args.seeds for cap in args.capabilities]


def run_all(args) -> None:
    runs_dir = Path(args.runs_dir)
    pending = chosen_runs(args)
    running: list[tuple[subprocess.Popen, str, float]] = []
    while pending or running:
        while pending and len(running) < args.jobs:
            cap, seed = pending.pop(0)
            out = runs_dir / f"{cap}_s{seed}"
            if (out / "results.json").is_file() and not args.rerun:
                continue
            out.mkdir(parents=True, exist_ok=True)
            env = {**os.environ, "ATEN_CPU_CAPABILITY": cap, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                   "TOKENIZERS_PARALLELISM": "false"}
            # Runs side by side share the cores: one thread each (igpo-demo's --sft-threads; demo_args may override).
            threads = ["--sft-threads", "1"] if args.jobs > 1 else []
            cmd = [sys.executable, "-m", "igpo_trainer.demo", "--out", str(out), "--seed", str(seed), *threads,
                   *args.demo_args]
            with open(out / "log.txt", "w") as log:
                running.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), out.name,
                                time.perf_counter()))
        time.sleep(5)
        for entry in list(running):
            proc, name, t0 = entry
            if proc.poll() is not None:
                running.remove(entry)
                status = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}, see log.txt)"
                print(f"{name}: {status} in {time.perf_counter() - t0:.0f} s", flush=True)


def critical_seconds(budget: dict) -> float:
    """A run's critical path: the serial stages' wall-clock plus the RL runs' CPU (`igpo-demo`'s
    ``critical_path_seconds``); runs that predate it report the CPU-time one only."""
    return budget.get("critical_path_seconds", budget.get("critical_path_cpu_seconds", float("nan")))


def policy_row(report: dict, policy: str) -> dict:
    """A demo report's mean row of ``policy``."""
    return next(row for row in report["rows"] if row["policy"] == policy)


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def aggregate(args) -> str:
    runs_dir, out = Path(args.runs_dir), Path(args.out)
    reports = {}
    for cap, seed in chosen_runs(args):
        path = runs_dir / f"{cap}_s{seed}" / "results.json"
        if path.is_file():
            reports[(cap, seed)] = json.loads(path.read_text())
    if not reports:
        raise SystemExit(f"no results under {runs_dir}")
    policies = [r["policy"] for r in next(iter(reports.values()))["rows"]]
    lines = ["| policy | " + " | ".join(name for name, _ in FIGURES) + " |",
             "|---|" + "---:|" * len(FIGURES)]
    ranges = {}
    for policy in policies:
        cells = []
        for _name, key in FIGURES:
            values = [policy_row(rep, policy).get(key) for rep in reports.values()]
            values = [v for v in values if v is not None]
            ranges[(policy, key)] = (min(values), max(values)) if values else None
            scale = pct if key != "searches" else (lambda x: f"{x:.2f}")
            cells.append("-" if not values else f"{scale(min(values))}–{scale(max(values))}")
        lines.append(f"| {policy} | " + " | ".join(cells) + " |")
    per_run = ["| numerics | warm-start seed | warm start met its criterion (epochs) | start: answer copy / query "
               "copy / opening share (last check) | IGPO EM (mean) | GRPO EM (mean) | IGPO − GRPO EM per RL seed | "
               "zero-adv groups GRPO / IGPO | critical path (s) |",
               "|---|---:|---|---|---:|---:|---|---:|---:|"]
    for (cap, seed), rep in reports.items():
        rows = {r["policy"]: r for r in rep["rows"]}
        c, sft = rep["conclusions"], rep["sft"]
        last = sft["checks"][-1] if sft.get("checks") else {}
        start = " / ".join(pct(last.get(k, float("nan"))) for k in ("copy_accuracy", "query_copy", "opening_share"))
        diffs = ", ".join(f"{100 * d:+.1f}" for d in c["igpo_em_minus_grpo_per_seed"])
        per_run.append(f"| {cap} | {seed} | {'yes' if sft.get('converged') else 'no'} ({sft.get('epochs', 0):.1f}) | "
                       f"{start} | {pct(rows['IGPO']['em'])} | {pct(rows['GRPO']['em'])} | {diffs} | "
                       f"{pct(c['zero_adv_groups_grpo'])} / {pct(c['zero_adv_groups_igpo'])} | "
                       f"{critical_seconds(rep.get('cpu_budget', {})):.0f} |")
    every = {
        "IGPO >= GRPO in held-out EM on every RL seed": all(r["conclusions"]["igpo_em_ge_grpo_every_seed"]
                                                            for r in reports.values()),
        "GRPO meets more zero-advantage groups than IGPO": all(
            r["conclusions"]["zero_adv_groups_grpo"] > r["conclusions"]["zero_adv_groups_igpo"]
            for r in reports.values()),
        "IGPO's mean EM at least GRPO's": all(
            policy_row(r, "IGPO")["em"] >= policy_row(r, "GRPO")["em"] for r in reports.values()),
        "IGPO's mean gold recall above GRPO's": all(
            policy_row(r, "IGPO")["gold_recall"] > policy_row(r, "GRPO")["gold_recall"] for r in reports.values()),
        "the warm start met its criterion": all(r["sft"].get("converged") for r in reports.values()),
    }
    settings = next(iter(reports.values()))["settings"]
    text = (f"Ranges (min–max) of the per-run means over {len(reports)} `igpo-demo` runs: numerics "
            f"{', '.join(sorted({c for c, _ in reports}))} (ATEN_CPU_CAPABILITY) x warm-start seeds "
            f"{', '.join(str(s) for s in sorted({s for _, s in reports}))}; each run {settings['rl_seeds']} RL seeds "
            f"per method, {settings['steps']} steps.\n\n" + "\n".join(lines) + "\n\nPer run:\n\n" + "\n".join(per_run)
            + "\n\nHeld on every run:\n\n" + "\n".join(f"- {k}: {'yes' if v else 'NO'}" for k, v in every.items())
            + "\n")
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo_ranges.md").write_text(text)
    (out / "demo_ranges.json").write_text(json.dumps({
        "runs": [f"{c}_s{s}" for c, s in reports], "ranges": {f"{p}/{k}": v for (p, k), v in ranges.items()},
        "held_on_every_run": every}, indent=1))
    print(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--capabilities", default="avx2,avx512,default", type=lambda s: s.split(","))
    parser.add_argument("--seeds", default="0,1", type=lambda s: [int(x) for x in s.split(",")],
                        help="warm-start seeds (igpo-demo --seed)")
    parser.add_argument("--runs", default=None, help="capability:seed pairs to run instead of every capability with "
                                                     "every seed, e.g. avx2:0,avx512:0,default:0,avx512:1")
    parser.add_argument("--jobs", type=int, default=1, help="demo runs at a time (each with its own RL workers)")
    parser.add_argument("--runs-dir", default="runs/demo_ranges")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--rerun", action="store_true")
    parser.add_argument("--aggregate-only", action="store_true")
    parser.add_argument("demo_args", nargs="*", help="extra igpo-demo arguments, after --")
    args = parser.parse_args(argv)
    if not args.aggregate_only:
        run_all(args)
    aggregate(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
