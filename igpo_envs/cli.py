"""``igpo-eval``: run an agent on one or more ``igpo/`` envs and print a results table in the paper's shape.

    igpo-eval --env igpo/HotpotQA-Distractor-v0 igpo/SynthMultiHop-v0 --agent search-question --episodes 200 \
        --seed 0 --json results.json

The library behind it is `igpo_envs.evaluation` (`evaluate`, `summarize`); this module only parses arguments and
prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from igpo_envs.agents import agent_names, make_agent
from igpo_envs.agents.llm import add_agent_arguments, agent_kwargs
from igpo_envs.evaluation import (  # noqa: F401  (evaluate, summarize and the errors are re-exported from here too)
    EnvSetupError,
    NoRetrieverError,
    evaluate,
    mean,
    summarize,
)
from igpo_envs.search.web import add_web_arguments, web_env_kwargs

# ---------------------------------------------------------------------------------------------- table and CLI
COLUMNS = (("EM", "em"), ("F1", "f1"), ("turns/ep", "turns"), ("searches/ep", "searches"))


def format_table(results: list[dict[str, Any]]) -> str:
    """One row per env (EM and F1 in percent, turns and searches per episode, and gold-passage recall in percent where
    the task knows its gold evidence) plus an average row."""
    def fmt(key, value):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        if key == "information_gain":
            return f"{value:+.4f}"
        return f"{100 * value:.1f}" if key in ("em", "f1", "gold_recall") else f"{value:.2f}"

    columns = COLUMNS
    if any(r.get("gold_recall") is not None for r in results):  # only tasks with known gold evidence have it
        columns = (*columns, ("gold recall", "gold_recall"))
    if any(r.get("information_gain") is not None for r in results):  # with --ig-scorer
        columns = (*columns, ("IG/search", "information_gain"))
    rows = [[r["env_id"], *(fmt(k, r.get(k)) for _, k in columns)] for r in results]
    if len(results) > 1:
        rows.append(["Avg.", *(fmt(k, mean([r[k] for r in results if r.get(k) is not None])) for _, k in columns)])
    header = ["env", *(name for name, _ in columns)]
    widths = [max(len(str(row[c])) for row in [header, *rows]) for c in range(len(header))]
    lines = ["  ".join(str(cell).ljust(w) if c == 0 else str(cell).rjust(w) for c, (cell, w) in
                       enumerate(zip(row, widths))) for row in [header, *rows]]
    lines.insert(1, "-" * len(lines[0]))
    if len(results) > 1:
        lines.insert(len(lines) - 1, "-" * len(lines[0]))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="igpo-eval", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", nargs="+", required=True, metavar="ID", help="one or more igpo/ env ids")
    parser.add_argument("--agent", required=True,
                        help=f"agent spec 'name' or 'name:arg' (registered: {', '.join(agent_names())})")
    parser.add_argument("--episodes", type=int, default=100, help="episodes per env (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the question order and the envs")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="write the results as JSON here")
    parser.add_argument("--env-kwargs", "--env_kwargs", type=json.loads, default={}, metavar="JSON",
                        help='extra env arguments as a JSON object, e.g. \'{"split": "dev", "corpus": "c.jsonl"}\'')
    parser.add_argument("--batch-size", type=int, default=64, help="episodes run in parallel (sub-envs)")
    parser.add_argument("--ig-scorer", default=None, metavar="PATH",
                        help="score information gain of tool turns with this model (needs igpo[train])")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_agent_arguments(parser)
    add_web_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not isinstance(args.env_kwargs, dict):
        print("igpo-eval: --env-kwargs must be a JSON object", file=sys.stderr)
        return 2
    results = []
    for env_id in args.env:
        # a fresh agent per env: seeded agents replay identically
        agent = make_agent(args.agent, **agent_kwargs(args.agent, args))
        env_kwargs = {**args.env_kwargs, **web_env_kwargs(args)}
        try:
            result = evaluate(env_id, agent, episodes=args.episodes, seed=args.seed, env_kwargs=env_kwargs,
                              batch_size=args.batch_size, progress=not args.no_progress, ig_scorer=args.ig_scorer)
        except EnvSetupError as exc:
            print(f"igpo-eval: {exc}", file=sys.stderr)
            return 2
        result["agent"] = args.agent
        results.append(result)
    print(format_table(results))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"agent": args.agent, "episodes": args.episodes, "seed": args.seed,
                                         "results": results}, indent=2, default=str))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
