"""What limits a policy at the RL start point, measured on its own sampled rollouts (G per question).

- error shares: every episode is ``correct``, ``format_error``, ``wrong_query`` (answered wrong, and the searches
  never retrieved all gold passages) or ``wrong_reading`` (answered wrong although every gold passage was retrieved);
- information gain per search turn, split by whether the turn's query retrieved a gold passage of its question (and,
  separately, the passage that states the answer): if IG separates good queries from bad ones, it carries signal;
- zero-advantage groups: the share of groups whose advantages are all zero under outcome-only GRPO (all outcomes
  equal) and under IGPO (all turn rewards equal), and the share of groups where every answer is wrong but some
  rollout retrieved the answer passage (where only IG can tell the rollouts apart).

The rollouts, belief scores and advantages come from the trainer's own code (`igpo_trainer.rollout`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from gymnasium.vector import AutoresetMode

from igpo_envs.vector import SearchQAVectorEnv
from igpo_trainer.rollout import (
    STOP_STRINGS,
    HFTurnGenerator,
    assign_turn_rewards,
    group_turn_advantages,
    run_episodes,
    score_beliefs,
)


def _mean(values) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def sample_generation_config(tokenizer, temperature: float = 1.0):
    """True sampling (no top-k cut), as the trainer samples with ``top_k=0``."""
    from transformers import GenerationConfig

    return GenerationConfig(do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


@torch.no_grad()
def start_diagnostics(model, tokenizer, env, *, num_questions: int = 32, num_generations: int = 8, seed: int = 0,
                      max_turn_length: int = 32, max_completion_length: int = 512, info_gain_type: str = "prob_diff",
                      probe_style: str = "answer") -> dict[str, Any]:
    """Sample ``num_generations`` rollouts for each of ``num_questions`` questions of ``env`` and measure (see the
    module docstring). Returns a flat dict of figures."""
    base = env.unwrapped
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    questions = rng.choice(len(base.items), size=min(num_questions, len(base.items)), replace=False)
    indices = [int(q) for q in questions for _ in range(num_generations)]
    envs = SearchQAVectorEnv.from_envs([base.spawn() for _ in indices], autoreset_mode=AutoresetMode.DISABLED)

    model.eval()
    generate = HFTurnGenerator(model, tokenizer, sample_generation_config(tokenizer),
                               STOP_STRINGS[base.protocol], [tokenizer.eos_token_id])
    episodes = run_episodes(envs, indices, generate, tokenizer=tokenizer, max_turns=base.max_turns,
                            max_turn_length=max_turn_length, max_completion_length=max_completion_length,
                            eos_token_id=tokenizer.eos_token_id)
    beliefs = score_beliefs(model, tokenizer, episodes, protocol=base.protocol, probe_style=probe_style)
    assign_turn_rewards(episodes, beliefs, info_gain_type=info_gain_type)

    # Which search turns retrieved gold evidence: re-run each observed query (retrieval is deterministic).
    searches = []  # (episode number, turn number among observed searches, query)
    for n, episode in enumerate(episodes):
        observed = [a for a in episode.actions if a.get("kind") in ("search", "browse")][: len(episode.info_gains)]
        searches += [(n, k, a.get("argument") or "") for k, a in enumerate(observed)]
    retrieved = base.retriever.search([q for _, _, q in searches], base.topk) if searches else []
    ig_gold, ig_answer, ig_other = [], [], []
    for (n, k, _), passages in zip(searches, retrieved):
        item = base.items[episodes[n].question_index]
        ids = {p.id for p in passages}
        gain = episodes[n].info_gains[k]
        (ig_gold if ids & set(item.gold_passage_ids) else ig_other).append(gain)
        if item.gold_passage_ids and item.gold_passage_ids[-1] in ids:
            ig_answer.append(gain)

    kinds = []
    for episode in episodes:
        if episode.em >= 1.0:
            kinds.append("correct")
        elif episode.format_error:
            kinds.append("format_error")
        elif not (episode.gold_recall >= 1.0):
            kinds.append("wrong_query")
        else:
            kinds.append("wrong_reading")
    wrong = [k for k in kinds if k in ("wrong_query", "wrong_reading")]

    outcome_rewards = [[e.outcome] for e in episodes]
    _, zero_grpo = group_turn_advantages(outcome_rewards, num_generations, gamma=1.0, norm="joint")
    _, zero_igpo = group_turn_advantages([e.turn_rewards for e in episodes], num_generations, gamma=1.0,
                                         norm="joint")
    answer_hit = set()  # episodes with a search turn that retrieved the passage stating the answer
    for (n, _, _), passages in zip(searches, retrieved):
        gold = base.items[episodes[n].question_index].gold_passage_ids
        if gold and gold[-1] in {p.id for p in passages}:
            answer_hit.add(n)
    groups = len(episodes) // num_generations
    all_wrong_some_gold = sum(
        all(e.em < 1.0 for e in episodes[g * num_generations:(g + 1) * num_generations])
        and any(n in answer_hit for n in range(g * num_generations, (g + 1) * num_generations))
        for g in range(groups)
    )
    return {
        "episodes": len(episodes),
        "em": _mean([e.em for e in episodes]),
        "f1": _mean([e.f1 for e in episodes]),
        "searches": _mean([e.num_searches for e in episodes]),
        "gold_recall": _mean([e.gold_recall for e in episodes]),
        "share_correct": kinds.count("correct") / len(kinds),
        "share_format_error": kinds.count("format_error") / len(kinds),
        "share_wrong_query": kinds.count("wrong_query") / len(kinds),
        "share_wrong_reading": kinds.count("wrong_reading") / len(kinds),
        "wrong_query_share_of_errors": wrong.count("wrong_query") / len(wrong) if wrong else float("nan"),
        "ig_gold_turns": _mean(ig_gold),
        "ig_answer_passage_turns": _mean(ig_answer),
        "ig_other_turns": _mean(ig_other),
        "n_gold_turns": len(ig_gold),
        "n_other_turns": len(ig_other),
        "zero_adv_frac_grpo": zero_grpo,
        "zero_adv_frac_igpo": zero_igpo,
        "all_wrong_but_answer_passage_frac": all_wrong_some_gold / max(1, groups),
    }


def format_diagnostics(d: dict[str, Any]) -> str:
    """A small markdown table of `start_diagnostics` figures."""
    def missing(x) -> bool:
        return x is None or (isinstance(x, float) and math.isnan(x))

    def pct(x) -> str:
        return "-" if missing(x) else f"{100 * x:.1f}%"

    def num(x) -> str:
        return "-" if missing(x) else f"{x:+.4f}"

    rows = [
        ("episodes sampled", str(d["episodes"])),
        ("EM / F1", f"{pct(d['em'])} / {pct(d['f1'])}"),
        ("searches per episode", f"{d['searches']:.2f}"),
        ("correct", pct(d["share_correct"])),
        ("format errors", pct(d["share_format_error"])),
        ("wrong query (gold evidence never retrieved)", pct(d["share_wrong_query"])),
        ("wrong reading (all gold retrieved, answer wrong)", pct(d["share_wrong_reading"])),
        ("wrong-query share of wrong answers", pct(d["wrong_query_share_of_errors"])),
        (f"mean IG, search turns that retrieved gold (n={d['n_gold_turns']})", num(d["ig_gold_turns"])),
        ("mean IG, search turns that retrieved the answer passage", num(d["ig_answer_passage_turns"])),
        (f"mean IG, other search turns (n={d['n_other_turns']})", num(d["ig_other_turns"])),
        ("zero-advantage groups, GRPO (outcome only)", pct(d["zero_adv_frac_grpo"])),
        ("zero-advantage groups, IGPO", pct(d["zero_adv_frac_igpo"])),
        ("groups all wrong but some rollout retrieved the answer passage", pct(d["all_wrong_but_answer_passage_frac"])),
    ]
    return "\n".join(["| at the RL start | value |", "|---|---:|"] + [f"| {a} | {b} |" for a, b in rows])
