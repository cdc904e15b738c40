"""Evidence-based demonstrations: oracle search trajectories for any env whose questions carry gold evidence.

A question with gold evidence (``QAItem.gold_titles``, as in ``igpo/HotpotQA-Distractor-v0``; or a synthetic world's
``metadata["oracle_queries"]``) has an obvious expert plan: search each piece of gold evidence by name, then answer
with the gold answer. `play_oracle` plays that plan in the real env, in the env's own protocol (``<search>`` tags or
JSON tool calls), so the observations are the retriever's real passages and the searches really retrieve what they
retrieve; `oracle_demonstrations` turns the played episodes into SFT rows rendered exactly as `igpo-train` rollouts
are, through `igpo_envs.transcript` (see `render_trajectory`): the chat-templated prompt, each policy turn as its own
tokens, each observation spliced in as the trainer splices it. ``completion_mask`` is 1 on the policy's turns (and
the EOS after the answer) and 0 on the prompt and the observations, which is what TRL's SFTTrainer trains on with
``completion_only_loss=True``.

`igpo_trainer.warmstart_cli` (``igpo-warmstart``) runs the SFT on these rows for any causal LM.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from igpo_envs.agents.builtin import answer_text, oracle_queries, search_text
from igpo_envs.types import QAItem


class NoGoldEvidenceError(ValueError):
    """A question has no gold evidence to script an oracle trajectory from."""


def oracle_plan(item: QAItem, protocol: str = "tag") -> list[str]:
    """The oracle's turns for ``item``: one search per piece of gold evidence (in order), then the first gold answer."""
    queries = oracle_queries(item)
    if not queries:
        raise NoGoldEvidenceError(
            f"question {item.id!r} has no gold evidence (neither gold_titles nor metadata['oracle_queries']); "
            "evidence-based demonstrations need questions that carry it (e.g. igpo/HotpotQA-Distractor-v0)"
        )
    return [search_text(q, protocol) for q in queries] + [answer_text(item.golden_answers[0])]


def play_oracle(env, index: int) -> tuple[str, list[tuple[str, str | None]], dict[str, Any]]:
    """Play question ``index`` of ``env`` with `oracle_plan`; returns (prompt, [(action, observation)], final info).

    The observation after the answer is None. Raises if the env ends the episode before the answer (``max_turns``
    smaller than the number of gold evidence pieces + 1).
    """
    base = env.unwrapped
    prompt, _ = base.reset(options={"question_index": int(index)})
    plan = oracle_plan(base.item, base.protocol)
    turns: list[tuple[str, str | None]] = []
    info: dict[str, Any] = {}
    for k, action in enumerate(plan):
        observation, _, terminated, truncated, info = base.step(action)
        last = k == len(plan) - 1
        if (terminated or truncated) != last:
            raise RuntimeError(f"question {base.item.id!r}: the env ended the episode at turn {k + 1} of the oracle's "
                               f"{len(plan)} (max_turns={base.max_turns}; error: {info.get('error')})")
        turns.append((action, None if last else observation))
    return prompt, turns, info


def render_trajectory(tokenizer, prompt: str, turns: Sequence[tuple[str, str | None]]) -> dict[str, list[int]]:
    """Token ids and loss mask of one played trajectory through the one transcript rendering
    (`igpo_envs.transcript.render_turns`, which `igpo-train` rollouts, belief scoring and `HFAgent` share), closed
    with the EOS the policy should learn to write after its answer."""
    from igpo_envs.transcript import render_turns

    transcript = render_turns(tokenizer, prompt, turns)
    return {"input_ids": transcript.ids + [tokenizer.eos_token_id], "completion_mask": transcript.agent_mask + [1]}


def oracle_demonstrations(env, tokenizer, indices: Sequence[int], num: int | None = None, *,
                          seed: int = 0) -> tuple[list[dict], dict[str, float]]:
    """SFT rows of the oracle on the env's questions ``indices`` (``num`` of them, cycling through a seeded
    shuffle of ``indices``; default: each once). Returns (rows, stats): the demonstrations' EM, F1 and gold recall
    (how often searching the evidence by name really retrieves it) and their token lengths."""
    indices = [int(i) for i in indices]
    if not indices:
        raise ValueError("no questions to build demonstrations from (indices is empty)")
    n_items = len(env.unwrapped.items)
    bad = [i for i in indices if not 0 <= i < n_items]
    if bad:
        raise ValueError(f"question indices {bad[:5]} are out of range: the env has {n_items} questions")
    num = len(indices) if num is None else int(num)
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    rng = np.random.default_rng(seed)
    order: list[int] = []
    while len(order) < num:
        order += [indices[i] for i in rng.permutation(len(indices))]
    rows, ems, f1s, recalls = [], [], [], []
    for index in order[:num]:
        prompt, turns, info = play_oracle(env, index)
        rows.append(render_trajectory(tokenizer, prompt, turns))
        ems.append(float(info.get("em", 0.0)))
        f1s.append(float(info.get("f1", 0.0)))
        if info.get("gold_recall") is not None:
            recalls.append(float(info["gold_recall"]))
    lengths = [len(r["input_ids"]) for r in rows]
    stats = {"demo_em": float(np.mean(ems)), "demo_f1": float(np.mean(f1s)),
             "demo_gold_recall": float(np.mean(recalls)) if recalls else float("nan"),
             "demo_tokens_mean": float(np.mean(lengths)), "demo_tokens_max": int(max(lengths))}
    return rows, stats
