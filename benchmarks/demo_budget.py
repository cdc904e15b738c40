"""CPU-time budget of ``make demo``: does the full `igpo-demo` stay under 10 minutes on 2 cores?

    python benchmarks/demo_budget.py                       # the full demo (3 RL seeds per method), budget 600 s
    python benchmarks/demo_budget.py --budget 600 -- --seeds 1

Runs ``igpo-demo`` in a child process and holds its CPU-time critical path against the budget: the CPU seconds of
the serial stages (model, warm start, diagnostics; one torch thread and serial BM25) plus the RL runs' own CPU
seconds scheduled over the worker processes as the demo's pool runs them (``cpu_budget`` in its results.json). That
is the demo's wall-clock on idle cores, and unlike the wall-clock it does not grow when other jobs share the machine.
Also reports the wall-clock and the total CPU time of the demo and its workers (`resource.getrusage` of children).
Exits 1 when the critical path is over the budget. Writes ``demo_budget.json`` under ``--out`` with the demo's own
stage timings.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=600.0, help="CPU seconds allowed (default 600 = 10 min)")
    parser.add_argument("--out", default="benchmarks/results", help="where demo_budget.json goes")
    parser.add_argument("demo_args", nargs="*", help="arguments for igpo-demo, after --")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="igpo-demo-budget-") as tmp:
        cmd = [sys.executable, "-m", "igpo_trainer.demo", "--out", tmp, *args.demo_args]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            print(f"igpo-demo failed (exit {proc.returncode}): {' '.join(cmd)}", file=sys.stderr)
            return proc.returncode
        report = json.loads((Path(tmp) / "results.json").read_text())
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    critical = report["cpu_budget"]["critical_path_cpu_seconds"]
    record = {
        "demo_args": args.demo_args, "budget_cpu_seconds": args.budget, "critical_path_cpu_seconds": critical,
        "total_cpu_seconds": cpu, "wall_seconds": wall, "within_budget": critical <= args.budget,
        "cpu_budget": report["cpu_budget"], "rl_seeds": report["settings"]["rl_seeds"],
        "steps": report["settings"]["steps"], "stage_seconds": report["timings"],
        "warm_start": {k: report["sft"][k] for k in ("steps", "epochs", "converged") if k in report["sft"]},
        "numerics": report.get("numerics"), "load_average_at_end": os.getloadavg(),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo_budget.json").write_text(json.dumps(record, indent=1))
    verdict = "within" if record["within_budget"] else "OVER"
    print(f"igpo-demo {' '.join(args.demo_args)}: CPU-time critical path {critical:.0f} s ({verdict} the "
          f"{args.budget:.0f} s budget; {report['cpu_budget']['workers']} RL worker(s)), total CPU {cpu:.0f} s, wall "
          f"{wall:.0f} s, load average at the end {record['load_average_at_end'][0]:.1f}; stages (wall s): "
          + ", ".join(f"{k} {v:.0f}" for k, v in report["timings"].items()))
    return 0 if record["within_budget"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
