"""Wall-clock budget of ``make demo``: does the full `igpo-demo` finish within 10 minutes on 2 idle cores?

    python benchmarks/demo_budget.py                       # the full demo (3 RL seeds per method), budget 600 s
    python benchmarks/demo_budget.py --budget 600 -- --seeds 1
    ATEN_CPU_CAPABILITY=avx2 python benchmarks/demo_budget.py --out DIR   # another CPU family's kernels

Runs ``igpo-demo`` in a child process, as a user would, and holds its wall-clock against the budget: run it on an
idle machine (it reports the load average before and after; other jobs make the figure meaningless). Also reports
the demo's critical path (``cpu_budget`` in its results.json: the serial stages' wall-clock, plus the RL runs' own
CPU seconds scheduled over the worker processes as the demo's pool runs them; the wall-clock minus process
start-up) and the total CPU time of the demo and its workers (`resource.getrusage` of children). Exits 1 when the
wall-clock is over the budget. Writes ``demo_budget.json`` under ``--out`` with the demo's own stage timings.
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
    parser.add_argument("--budget", type=float, default=600.0, help="wall-clock seconds allowed (default 600 = 10 min)")
    parser.add_argument("--out", default="benchmarks/results", help="where demo_budget.json goes")
    parser.add_argument("demo_args", nargs="*", help="arguments for igpo-demo, after --")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="igpo-demo-budget-") as tmp:
        cmd = [sys.executable, "-m", "igpo_trainer.demo", "--out", tmp, *args.demo_args]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        load_before = os.getloadavg()
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
    critical = report["cpu_budget"]["critical_path_seconds"]
    record = {
        "demo_args": args.demo_args, "budget_seconds": args.budget, "wall_seconds": wall,
        "within_budget": wall <= args.budget, "critical_path_seconds": critical, "total_cpu_seconds": cpu,
        "cpu_budget": report["cpu_budget"], "rl_seeds": report["settings"]["rl_seeds"],
        "steps": report["settings"]["steps"], "stage_seconds": report["timings"],
        "warm_start": {k: report["sft"][k] for k in ("steps", "epochs", "converged") if k in report["sft"]},
        "numerics": report.get("numerics"), "load_average_at_start": load_before,
        "load_average_at_end": os.getloadavg(),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo_budget.json").write_text(json.dumps(record, indent=1))
    verdict = "within" if record["within_budget"] else "OVER"
    print(f"igpo-demo {' '.join(args.demo_args)}: wall-clock {wall:.0f} s ({verdict} the {args.budget:.0f} s budget; "
          f"{report['cpu_budget']['workers']} RL worker(s)), critical path {critical:.0f} s, total CPU {cpu:.0f} s, "
          f"load average {load_before[0]:.1f} at the start, {record['load_average_at_end'][0]:.1f} at the end; "
          "stages (wall s): "
          + ", ".join(f"{k} {v:.0f}" for k, v in report["timings"].items()))
    return 0 if record["within_budget"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
