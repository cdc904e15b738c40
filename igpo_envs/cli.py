"""``igpo-eval``: run an agent on one or more ``igpo/`` envs and print a results table in the paper's shape.

    igpo-eval --env igpo/HotpotQA-Distractor-v0 igpo/SynthMultiHop-v0 --agent search-question --episodes 200 \
        --seed 0 --json results.json

`evaluate` is the reusable function behind it (the trainer and the demo call it).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from tqdm.auto import tqdm

import igpo_envs  # noqa: F401  (registers the ids)
from igpo_envs.agents import Agent, act_batch, agent_names, make_agent
from igpo_envs.agents.llm import add_agent_arguments, agent_kwargs
from igpo_envs.search.web import add_web_arguments, web_env_kwargs


def _episode_order(num_questions: int, episodes: int, seed: int) -> list[int]:
    """Question indices for ``episodes`` episodes: a seeded permutation, repeated (reshuffled) if episodes > questions."""
    rng = np.random.default_rng(seed)
    order: list[int] = []
    while len(order) < episodes:
        order.extend(int(i) for i in rng.permutation(num_questions))
    return order[:episodes]


def _record(info: dict[str, Any], reward: float, truncated: bool) -> dict[str, Any]:
    return {
        "question_id": info["question_id"],
        "reward": float(reward),
        "em": float(info["em"]),
        "f1": float(info["f1"]),
        "turns": int(info["turn"]),
        "searches": int(info["num_searches"]),
        "repeated_queries": int(info["repeated_queries"]),
        "gold_recall": info.get("gold_recall"),
        "prediction": info.get("prediction"),
        "error": info.get("error"),
        "truncated": bool(truncated),
    }


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Averages over episodes: EM, F1, reward, turns and searches per episode, format-error and truncation rates,
    and gold-passage recall (over the episodes whose gold evidence is known)."""
    recalls = [r["gold_recall"] for r in records if r["gold_recall"] is not None]
    return {
        "episodes": len(records),
        "em": _mean([r["em"] for r in records]),
        "f1": _mean([r["f1"] for r in records]),
        "reward": _mean([r["reward"] for r in records]),
        "turns": _mean([r["turns"] for r in records]),
        "searches": _mean([r["searches"] for r in records]),
        "repeated_queries": _mean([r["repeated_queries"] for r in records]),
        "format_error_rate": _mean([float(r["error"] is not None) for r in records]),
        "truncation_rate": _mean([float(r["truncated"]) for r in records]),
        "gold_recall": _mean(recalls) if recalls else None,
    }


class EnvSetupError(ValueError):
    """The env to evaluate cannot be built from the given arguments (`igpo-eval` prints it without a traceback)."""


class NoRetrieverError(EnvSetupError):
    """The env to evaluate has a search tool but nothing to search: every score would be a meaningless zero."""


def _no_retriever_message(env_id: str) -> str:
    return (f"{env_id} has no retriever: every search would return a notice and the table would be zeros. Pass "
            "a corpus or a retriever, e.g. --env-kwargs '{\"corpus\": \"wiki18.jsonl\"}' (a wiki-18 style jsonl; "
            "igpo_envs/data/wiki18_sample.jsonl is a small one), --env-kwargs '{\"retriever_url\": "
            "\"http://127.0.0.1:8000/retrieve\"}' (a Search-R1 server such as `igpo-retriever`), or --web-search "
            "BACKEND. From Python: evaluate(..., env_kwargs={\"corpus\": ...}).")


def _make_venv(env_id: str, num_envs: int, env_kwargs: dict[str, Any]):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # gymnasium's notes on custom vector envs; ours warns itself
        return gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point",
                            autoreset_mode=AutoresetMode.DISABLED, **env_kwargs)


def evaluate(
    env_id: str,
    agent: Agent | str,
    episodes: int = 100,
    seed: int = 0,
    env_kwargs: dict[str, Any] | None = None,
    batch_size: int = 64,
    progress: bool = True,
    ig_scorer: str | None = None,
    keep_episodes: bool = True,
) -> dict[str, Any]:
    """Run ``episodes`` episodes of ``agent`` on ``env_id`` and return the summary (see `summarize`) plus run details.

    Episodes are questions in a seeded random order (no repeats until every question was asked), run ``batch_size``
    at a time in the native vector env: one batched agent call (``act_batch``) and one batched retriever call per step.
    With ``ig_scorer`` (a scorer model path) every sub-env is wrapped in the information-gain wrapper and the summary
    also reports the mean information gain per tool turn. An env with a search tool but no retriever (a paper split
    given no corpus) raises `NoRetrieverError` saying how to pass one.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    agent_spec = agent if isinstance(agent, str) else type(agent).__name__
    agent = make_agent(agent) if isinstance(agent, str) else agent
    num_envs = max(1, min(int(batch_size), int(episodes)))
    try:
        venv = _make_venv(env_id, num_envs, dict(env_kwargs or {}))
    except (ValueError, TypeError, OSError, gym.error.Error) as exc:  # bad ids, arguments or files
        raise EnvSetupError(f"cannot build {env_id}: {type(exc).__name__}: {exc}") from exc
    first_env = venv.unwrapped.envs[0]
    if first_env.retriever is None and "search" in first_env.tools:
        venv.close()
        raise NoRetrieverError(_no_retriever_message(env_id))
    try:
        if hasattr(agent, "bind"):
            agent.bind(venv)
        steppers = None
        if ig_scorer is not None:
            from igpo_envs.information_gain import wrap_with_information_gain  # torch: only when asked for

            steppers = [wrap_with_information_gain(env, ig_scorer) for env in venv.unwrapped.envs]
        order = _episode_order(len(venv.unwrapped.items), episodes, seed)
        records: list[dict[str, Any]] = []
        gains: list[float] = []
        start = time.perf_counter()
        bar = tqdm(total=episodes, desc=env_id, disable=not progress, leave=False)

        # Every sub-env starts one episode; finished sub-envs get the next question until the order is used up.
        first, queue = order[:num_envs], order[num_envs:]
        observations, infos = _reset(venv, steppers, np.ones(num_envs, dtype=bool), first, seed)
        active = np.ones(num_envs, dtype=bool)
        while active.any():
            live = np.flatnonzero(active)
            actions = [""] * num_envs
            for i, action in zip(live, act_batch(agent, [observations[i] for i in live], [infos[i] for i in live])):
                actions[i] = action
            results = _step(venv, steppers, actions, live)
            for i, (obs, reward, terminated, truncated, info) in results.items():
                observations[i], infos[i] = obs, info
                gains.extend([info["information_gain"]] if info.get("action", {}).get("kind") in ("search", "browse")
                             and "information_gain" in info else [])
                if terminated or truncated:
                    records.append(_record(info, reward, truncated))
                    active[i] = False
                    bar.update(1)
            restart = np.flatnonzero(~active)[: len(queue)]
            if len(restart):
                mask = np.zeros(num_envs, dtype=bool)
                mask[restart] = True
                indices = [0] * num_envs
                for i in restart:
                    indices[i] = queue.pop(0)
                new_obs, new_infos = _reset(venv, steppers, mask, indices, None)
                for i in restart:
                    observations[i], infos[i] = new_obs[i], new_infos[i]
                active[restart] = True
        bar.close()
        elapsed = time.perf_counter() - start
        corpus_hash = venv.unwrapped.envs[0].corpus_hash
    finally:
        venv.close()
    summary = summarize(records)
    if ig_scorer is not None:
        summary["information_gain"] = _mean(gains)
    result = {"env_id": env_id, "agent": agent_spec, "seed": seed, "env_kwargs": env_kwargs or {},
              "corpus_hash": corpus_hash, "seconds": elapsed, **summary}
    if keep_episodes:
        result["per_episode"] = records
    return result


def _reset(venv, steppers, mask, indices, seed):
    """Reset the masked sub-envs onto ``indices``; returns per-env observation and info lists."""
    if steppers is None:
        options = {"reset_mask": np.asarray(mask, dtype=np.bool_), "question_index": list(indices)}
        obs, _ = venv.reset(seed=seed, options=options)
        return list(obs), list(venv.unwrapped.last_infos)
    observations, infos = [""] * len(steppers), [{}] * len(steppers)
    for i in np.flatnonzero(mask):
        observations[i], infos[i] = steppers[i].reset(seed=None if seed is None else seed + int(i),
                                                      options={"question_index": indices[i]})
    return observations, infos


def _step(venv, steppers, actions, live):
    """Step the live sub-envs; returns ``{index: (obs, reward, terminated, truncated, info)}``."""
    if steppers is None:
        obs, rewards, terminated, truncated, _ = venv.step(actions)
        infos = venv.unwrapped.last_infos
        return {int(i): (obs[i], float(rewards[i]), bool(terminated[i]), bool(truncated[i]), infos[i]) for i in live}
    return {int(i): steppers[i].step(actions[i]) for i in live}


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
        rows.append(["Avg.", *(fmt(k, _mean([r[k] for r in results if r.get(k) is not None])) for _, k in columns)])
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
    parser.add_argument("--env-kwargs", type=json.loads, default={}, metavar="JSON",
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
