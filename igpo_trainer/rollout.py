"""Batched multi-turn rollouts on the igpo envs, information-gain turn rewards, and per-token advantages.

One rollout batch (prompts × G rollouts) runs turn by turn: ONE generation call for all live rollouts, ONE
`SearchQAVectorEnv` step (one retriever call) for their actions, observation tokens appended to each context with loss
weight 0 (``env_mask`` 0), the policy's tokens with weight 1. After the episodes, the beliefs v_0..v_K of every rollout
are scored in one packed, no-grad forward (``batch_answer_logprobs``) under the policy at rollout time; each tool turn's
reward is its information gain and the last turn's is the env's outcome (answer F1 or the format penalty).

Generation is behind the `TurnGenerator` protocol so the same episode loop runs with transformers ``generate`` (CPU,
tests) or with TRL's vLLM backend (``trainer.vllm_generation``, server or colocate mode; see `VLLMTurnGenerator`).

Token bookkeeping of one completion (everything after the prompt):

    policy turn 0 | observation 0 | policy turn 1 | observation 1 | ... | final policy turn | [EOS]
    env_mask   1  |      0        |       1       |       0       | ... |         1         |   0
    token_turn 0  |     -1        |       1       |      -1       | ... |         T-1       |  -1

The final turn never has an observation after it; the EOS closing an episode is added by us (mask 0) when the policy
stopped at a closing tag, so TRL does not count the episode as clipped.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from gymnasium.vector import AutoresetMode

from igpo_envs.hf_tokenizer import generated_turn, stopping_kwargs
from igpo_envs.protocol import THINK_OPEN, observation_text  # noqa: F401  (re-exported: the trainer's rendering)
from igpo_envs.transcript import observation_ids, prompt_ids
from igpo_envs.vector import SearchQAVectorEnv
from igpo_trainer.advantages import finite_turn_advantages

# A policy turn ends at the closing tag of its action (or at EOS).
STOP_STRINGS = {"tag": ("</search>", "</answer>", "</browse>"), "tool_call": ("</tool_call>", "</answer>")}


def vllm_generation_kwargs(protocol: str, generation_kwargs: dict | None = None) -> dict:
    """GRPOConfig.generation_kwargs for the vLLM backend: vLLM's SamplingParams stop a turn at the protocol's closing
    tags (the `STOP_STRINGS` the transformers backend stops at too) and keep the tag in the turn's text. Entries of
    ``generation_kwargs`` win."""
    return {"stop": list(STOP_STRINGS[protocol]), "include_stop_str_in_output": True, **(generation_kwargs or {})}


# --------------------------------------------------------------------------------------------------------------------
# Episode record
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class Episode:
    """One multi-turn rollout: its tokens, masks, turn bookkeeping and per-episode statistics."""

    prompt_ids: list[int]
    golden_answers: tuple[str, ...]
    question_index: int = -1
    completion_ids: list[int] = field(default_factory=list)
    env_mask: list[int] = field(default_factory=list)  # 1 = policy token (trained), 0 = observation / added token
    token_turn: list[int] = field(default_factory=list)  # turn of each completion token; -1 for non-policy tokens
    logprobs: list[float] | None = None  # sampling log-probs per completion token (vLLM); None with transformers
    belief_boundaries: list[int] = field(default_factory=list)  # prefix lengths after which v_0..v_K are scored
    num_turns: int = 0
    num_searches: int = 0
    done: bool = False
    budget_exhausted: bool = False  # the completion hit max_completion_length before the episode ended
    outcome: float = 0.0
    em: float = 0.0
    f1: float = 0.0
    format_error: bool = False
    gold_recall: float = float("nan")
    info_gains: list[float] = field(default_factory=list)
    turn_rewards: list[float] = field(default_factory=list)
    actions: list[dict] = field(default_factory=list)  # the env's parsed action of each turn (its info["action"])

    @property
    def context(self) -> list[int]:
        return self.prompt_ids + self.completion_ids

    def add_tokens(self, ids: Sequence[int], *, policy_turn: int | None, logprobs: Sequence[float] | None = None):
        """Append tokens; ``policy_turn`` = the turn index for policy tokens, None for observation/added tokens."""
        ids = list(ids)
        self.completion_ids += ids
        self.env_mask += [0 if policy_turn is None else 1] * len(ids)
        self.token_turn += [-1 if policy_turn is None else policy_turn] * len(ids)
        if self.logprobs is not None or logprobs is not None:
            self.logprobs = (self.logprobs or [0.0] * (len(self.completion_ids) - len(ids))) + list(
                logprobs if logprobs is not None else [0.0] * len(ids)
            )


# --------------------------------------------------------------------------------------------------------------------
# Generation backends
# --------------------------------------------------------------------------------------------------------------------
class TurnGenerator(Protocol):
    """Generates one policy turn for each context; returns (new token ids, sampling logprobs or None) per context."""

    def __call__(self, contexts: list[list[int]], max_new_tokens: int) -> list[tuple[list[int], list[float] | None]]:
        ...


class HFTurnGenerator:
    """One left-padded ``model.generate`` call per turn for all live rollouts, stopping at the protocol's closing tags.

    ``generation_config`` carries the sampling settings (temperature, top_k, top_p, ...; TRL builds it from the
    GRPOConfig, so HF's top_k=50 default is not silently applied). The KV cache serves the tokens of one turn; each
    turn re-reads its context (prompt, earlier turns, observations) in one prefill. A turn ends at the token that
    completes a closing tag, also where a real vocabulary spells the tag as several tokens or ends it inside a longer
    one (`igpo_envs.hf_tokenizer.stopping_kwargs`, `generated_turn`).
    """

    def __init__(self, model, tokenizer, generation_config, stop_strings: Sequence[str], eos_token_ids: Sequence[int]):
        self.model, self.tokenizer = model, tokenizer
        self.generation_config = generation_config
        self.stop_strings = list(stop_strings)
        self.eos_token_ids = set(eos_token_ids)
        self.pad_token_id = tokenizer.pad_token_id

    @torch.no_grad()
    def __call__(self, contexts, max_new_tokens):
        if not contexts:
            return []
        width = max(len(c) for c in contexts)
        device = self.model.device
        input_ids = torch.full((len(contexts), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(contexts), width), dtype=torch.long)
        for row, ids in enumerate(contexts):
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention_mask[row, width - len(ids) :] = 1
        config = copy.deepcopy(self.generation_config)
        config.max_new_tokens = max_new_tokens
        eos = config.eos_token_id if config.eos_token_id is not None else sorted(self.eos_token_ids)
        output = self.model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            generation_config=config,
            **stopping_kwargs(self.tokenizer, self.stop_strings, eos),
        )
        return [(self._cut(row.tolist()), None) for row in output[:, width:].cpu()]

    def _cut(self, ids: list[int]) -> list[int]:
        """The tokens of one finished row (`igpo_envs.hf_tokenizer.generated_turn`, shared with `HFAgent`)."""
        return generated_turn(self.tokenizer, ids, self.stop_strings, self.eos_token_ids, self.pad_token_id)


class VLLMTurnGenerator:
    """Turn generation through TRL's vLLM backend (``trainer.vllm_generation``, server or colocate mode).

    The per-turn stop strings go into vLLM's SamplingParams through ``GRPOConfig.generation_kwargs`` (`IGPOTrainer`
    adds ``stop`` and ``include_stop_str_in_output``), and the turn limit ``max_new_tokens`` becomes its
    ``max_tokens``: TRL sends ``max_tokens = vllm_generation.max_completion_length``, which is set to the turn limit
    for the call (a ``max_tokens`` in ``generation_kwargs`` would override it). In server mode every process must call
    ``generate`` the same number of times, so the episode loop keeps calling with an empty list on processes whose
    episodes have all ended (see `run_episodes`, ``sync``); the main process's turn limit is the one sent.
    """

    def __init__(self, trainer):
        self.trainer = trainer

    def __call__(self, contexts, max_new_tokens):
        generation = self.trainer.vllm_generation
        whole_completion, generation.max_completion_length = generation.max_completion_length, max_new_tokens
        try:
            _, completion_ids, logprobs, _ = generation.generate(prompts=contexts, images=None, num_generations=1)
        finally:
            generation.max_completion_length = whole_completion
        return [(list(ids), [lp[0] for lp in lps]) for ids, lps in zip(completion_ids, logprobs)]


# --------------------------------------------------------------------------------------------------------------------
# Episode loop
# --------------------------------------------------------------------------------------------------------------------
def encode_prompt(tokenizer, prompt: str | list[dict]) -> list[int]:
    """Token ids of the task prompt (`igpo_envs.transcript.prompt_ids`: the chat template when there is one)."""
    return prompt_ids(tokenizer, prompt)


def run_episodes(
    envs: SearchQAVectorEnv | Sequence,
    question_indices: Sequence[int],
    generate: TurnGenerator,
    *,
    tokenizer,
    max_turns: int,
    max_turn_length: int,
    max_completion_length: int,
    eos_token_id: int,
    sync=None,
    system_prompt: str | None = None,
    force_think: bool = False,
) -> list[Episode]:
    """Play one episode per sub-env (sub-env i on question ``question_indices[i]``), all turns batched.

    ``envs``: a `SearchQAVectorEnv` in ``AutoresetMode.DISABLED`` with one sub-env per episode, or a sequence of
    `SearchQAEnv` (wrapped with `SearchQAVectorEnv.from_envs`). Every turn is ONE ``generate`` call for the live
    episodes and ONE ``envs.step`` (one retriever call). ``sync(any_live) -> bool`` (optional) makes the loop
    continue while any process still has live episodes (needed by vLLM server mode).
    ``system_prompt`` (optional) opens the chat before the task prompt. ``force_think`` writes ``<think>`` at the
    start of every policy turn, as the official IGPO rollouts do: context, not trained, and part of the turn's text
    for the env; beliefs are scored before it (the official probe opens its own ``<think>``).
    """
    if isinstance(envs, SearchQAVectorEnv):
        if envs.autoreset_mode != AutoresetMode.DISABLED:
            raise ValueError(f"run_episodes needs a vector env with autoreset_mode=DISABLED, got {envs.autoreset_mode}")
        venv = envs
    else:
        venv = SearchQAVectorEnv.from_envs(envs, autoreset_mode=AutoresetMode.DISABLED)
    if len(question_indices) != venv.num_envs:
        raise ValueError(f"got {len(question_indices)} question indices for {venv.num_envs} sub-envs")
    think_ids = tokenizer(THINK_OPEN, add_special_tokens=False)["input_ids"] if force_think else []
    observations, _ = venv.reset(options={"question_index": [int(i) for i in question_indices]})
    episodes = []
    for env, observation, index in zip(venv.envs, observations, question_indices):
        prompt = observation if system_prompt is None else [
            {"role": "system", "content": system_prompt}, {"role": "user", "content": observation}]
        episode = Episode(encode_prompt(tokenizer, prompt), tuple(env.item.golden_answers), int(index))
        episode.belief_boundaries.append(len(episode.prompt_ids))  # v_0: the question only
        episode.prompt_ids += think_ids  # the first turn's forced <think> belongs to the prompt
        episodes.append(episode)

    for turn in range(max_turns):
        live = [i for i, e in enumerate(episodes) if not e.done]
        if not (sync(bool(live)) if sync is not None else live):
            break
        budgets = [max_completion_length - len(episodes[i].completion_ids) for i in live]
        outputs = generate([episodes[i].context for i in live], min(max_turn_length, max([1, *budgets])))
        actions = [""] * len(episodes)  # an episode this loop ended early ends its sub-env with a (ignored) bad turn
        for i, budget, (ids, logprobs) in zip(live, budgets, outputs, strict=True):
            if len(ids) >= budget:  # the completion is full: this turn is the last, cut to what fits
                ids, logprobs = ids[:budget], (logprobs[:budget] if logprobs is not None else None)
                episodes[i].budget_exhausted = True
            episodes[i].add_tokens(ids, policy_turn=turn, logprobs=logprobs)
            episodes[i].num_turns += 1
            actions[i] = (THINK_OPEN if force_think else "") + tokenizer.decode(ids, skip_special_tokens=True)
        if not live:
            continue
        observations, rewards, terminations, truncations, _ = venv.step(actions)
        for i in live:
            _record_step(episodes[i], observations[i], float(rewards[i]), bool(terminations[i]),
                         bool(truncations[i]), venv.last_infos[i], tokenizer,
                         max_completion_length=max_completion_length, eos_token_id=eos_token_id,
                         last_turn=turn == max_turns - 1, no_answer_reward=venv.envs[i].no_answer_reward,
                         next_turn_ids=think_ids)
    return episodes


def _record_step(episode, observation, reward, terminated, truncated, info, tokenizer, *,
                 max_completion_length, eos_token_id, last_turn, no_answer_reward=0.0, next_turn_ids=()):
    action = info.get("action") or {}
    episode.actions.append(action)
    if action.get("kind") in ("search", "browse"):
        episode.num_searches += 1
    if not (terminated or truncated):
        if not (episode.budget_exhausted or last_turn):
            obs_ids = observation_ids(tokenizer, observation)
            if len(episode.completion_ids) + len(obs_ids) + len(next_turn_ids) < max_completion_length:
                episode.add_tokens(obs_ids, policy_turn=None)
                episode.belief_boundaries.append(len(episode.context))  # v_k: after the k-th observation
                episode.add_tokens(next_turn_ids, policy_turn=None)  # the next turn's forced opening, if any
                return
            episode.budget_exhausted = True
        # Out of turns or tokens without an answer: the env's reward for that (its own turn limit gives the same).
        reward = no_answer_reward
    episode.done = True
    episode.outcome = float(reward)
    episode.em = float(info.get("em", 0.0) or 0.0)
    episode.f1 = float(info.get("f1", 0.0) or 0.0)
    episode.format_error = action.get("kind") == "invalid"
    recall = info.get("gold_recall")
    episode.gold_recall = float(recall) if recall is not None else float("nan")
    ended_cleanly = episode.completion_ids and episode.completion_ids[-1] == eos_token_id
    if not episode.budget_exhausted and not ended_cleanly:
        episode.add_tokens([eos_token_id], policy_turn=None)


# --------------------------------------------------------------------------------------------------------------------
# Information gain and turn rewards
# --------------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def score_beliefs(model, tokenizer, episodes: Sequence[Episode], *, protocol: str, probe_style: str,
                  turn_opening: str = ""):
    """Beliefs v_0..v_K of every episode in one packed no-grad forward: mean log-prob of the first gold alias.

    ``turn_opening``: the text forced at the start of every turn (``<think>`` with force_think); the probe, a turn
    written at a belief boundary, then starts with it as its own piece, as the rollout writes it."""
    from igpo_envs.information_gain import first_alias, tokenize_probe
    from igpo_trainer.scoring import batch_answer_logprobs

    sequences, boundaries, probes, masks = [], [], [], []
    for episode in episodes:
        opening = {"turn_opening": turn_opening} if turn_opening else {}
        probe, mask = tokenize_probe(tokenizer, first_alias(episode.golden_answers), protocol, probe_style, **opening)
        sequences.append(torch.tensor(episode.context, dtype=torch.long))
        boundaries.append(list(episode.belief_boundaries))
        probes.append(torch.tensor(probe, dtype=torch.long))
        masks.append(torch.tensor(mask, dtype=torch.bool))
    return batch_answer_logprobs(model, sequences, boundaries, probes, masks)


def assign_turn_rewards(
    episodes: Sequence[Episode],
    beliefs: Sequence[torch.Tensor] | None,
    *,
    info_gain_type: str = "prob_diff",
    ig_clip: float | None = None,
) -> None:
    """turn_rewards = [IG of each tool turn that got an observation] + [outcome]; [outcome] when beliefs is None."""
    from igpo_trainer.scoring import information_gains

    for n, episode in enumerate(episodes):
        if beliefs is None:
            episode.turn_rewards = [episode.outcome]
            continue
        gains = [float(g) for g in information_gains(beliefs[n], info_gain_type)]
        if ig_clip is not None:
            gains = [max(-ig_clip, min(ig_clip, g)) for g in gains]
        episode.info_gains = gains
        episode.turn_rewards = gains + [episode.outcome]
        if len(episode.turn_rewards) != episode.num_turns:
            raise RuntimeError(
                f"episode on question {episode.question_index}: {len(gains)} observed tool turns + 1 outcome "
                f"!= {episode.num_turns} turns (rollout bookkeeping bug)"
            )


# --------------------------------------------------------------------------------------------------------------------
# Advantages per token
# --------------------------------------------------------------------------------------------------------------------
def broadcast_turn_advantages(token_turn: Sequence[int], advantages: Sequence[float]) -> list[float]:
    """Per-token advantages: each policy token of turn t gets A_t; observation tokens get 0.

    A single advantage (outcome-only GRPO) is broadcast to every turn.
    """
    if len(advantages) == 1:
        return [advantages[0] if t >= 0 else 0.0 for t in token_turn]
    return [advantages[t] if t >= 0 else 0.0 for t in token_turn]


def group_turn_advantages(
    turn_rewards: Sequence[Sequence[float]],
    num_generations: int,
    *,
    gamma: float,
    norm: str,
    std_floor: float = 0.0,
    scale: bool = True,
) -> tuple[list[list[float]], float]:
    """Turn advantages for consecutive groups of ``num_generations`` rollouts, and the share of all-zero groups.

    A rollout with a non-finite turn reward gets zero advantages and is left out of its group's statistics.
    """
    if len(turn_rewards) % num_generations:
        raise ValueError(f"{len(turn_rewards)} rollouts do not split into groups of {num_generations}")
    advantages, collapsed = [], 0
    for start in range(0, len(turn_rewards), num_generations):
        group = finite_turn_advantages(
            turn_rewards[start : start + num_generations], gamma=gamma, norm=norm, std_floor=std_floor, scale=scale
        )
        collapsed += all(abs(a) < 1e-8 for turns in group for a in turns)
        advantages += group
    return advantages, collapsed / max(1, len(turn_rewards) // num_generations)


def episode_metrics(episodes: Sequence[Episode]) -> dict[str, Any]:
    """Per-episode statistics the trainer logs (averaged over the batch by the caller)."""
    searches_turns = [g for e in episodes for g in e.info_gains]
    return {
        "f1": [e.f1 for e in episodes],
        "em": [e.em for e in episodes],
        "outcome": [e.outcome for e in episodes],
        "turns": [e.num_turns for e in episodes],
        "searches": [e.num_searches for e in episodes],
        "format_error": [float(e.format_error) for e in episodes],
        "gold_recall": [e.gold_recall for e in episodes],
        "info_gain": searches_turns,
    }


class Timer:
    """Accumulates wall-clock seconds of a named phase (IG scoring's share of the step is logged)."""

    def __init__(self):
        self.seconds = 0.0

    def __enter__(self):
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds += time.perf_counter() - self._start
