"""`evaluate`: run an agent on an ``igpo/`` env for a number of episodes and summarise them (EM, F1, turns, searches,
format errors, gold-passage recall). ``igpo-eval`` (`igpo_envs.cli`) prints its results as a table; the demo and the
learning-curve benchmark call it for held-out evaluation.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from tqdm.auto import tqdm

import igpo_envs  # noqa: F401  (registers the ids)
from igpo_envs.agents import Agent, act_batch, make_agent


def episode_order(num_questions: int, episodes: int, seed: int) -> list[int]:
    """Question indices for ``episodes`` episodes: a seeded permutation, repeated (reshuffled) when there are more
    episodes than questions."""
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


def mean(values: list[float]) -> float:
    """The mean, NaN for no values."""
    return float(np.mean(values)) if values else float("nan")


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Averages over episodes: EM, F1, reward, turns and searches per episode, format-error and truncation rates,
    and gold-passage recall (over the episodes whose gold evidence is known)."""
    recalls = [r["gold_recall"] for r in records if r["gold_recall"] is not None]
    return {
        "episodes": len(records),
        "em": mean([r["em"] for r in records]),
        "f1": mean([r["f1"] for r in records]),
        "reward": mean([r["reward"] for r in records]),
        "turns": mean([r["turns"] for r in records]),
        "searches": mean([r["searches"] for r in records]),
        "repeated_queries": mean([r["repeated_queries"] for r in records]),
        "format_error_rate": mean([float(r["error"] is not None) for r in records]),
        "truncation_rate": mean([float(r["truncated"]) for r in records]),
        "gold_recall": mean(recalls) if recalls else None,
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
        order = episode_order(len(venv.unwrapped.items), episodes, seed)
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
        summary["information_gain"] = mean(gains)
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
