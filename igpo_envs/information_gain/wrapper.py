"""A Gymnasium wrapper that adds information-gain rewards to every tool turn of an igpo env."""

from __future__ import annotations

from functools import lru_cache

import gymnasium as gym

from igpo_envs.information_gain.formulas import information_gain
from igpo_envs.information_gain.scorer import InformationGainScorer
from igpo_envs.protocol import TOOLS


class InformationGainWrapper(gym.Wrapper):
    """Adds IGPO's information gain to the reward of each tool turn.

    ## Description
    After every tool turn (an action whose ``info["action"]["kind"]`` is ``"search"`` or ``"browse"``) the wrapper
    scores the new belief ``v_k``, the scorer model's mean log-probability of the gold answer (first alias) after the
    history so far, and adds ``IG_k = info_gain(v_{k-1}, v_k)`` to the step reward. Answer and invalid turns are passed
    through unchanged. The history is the env's ``info["messages"]``, rendered with `render_history`.

    ## Rewards
    Tool turn: the env's reward (0 for the igpo envs) + ``IG_k`` (``prob_diff``: ``exp(v_k) - exp(v_{k-1})``, in
    [-1, 1]; ``log_prob_diff``: ``v_k - v_{k-1}``). Other turns: the env's reward.

    ## Info
    ``info["beliefs"]``: ``[v_0, ..., v_k]`` so far (from reset on); ``info["information_gain"]``: this step's IG
    (0.0 on non-tool turns and at reset).

    ## Arguments
    ``env``: an igpo env (``env.unwrapped.item.golden_answers`` holds the gold answers; ``info["messages"]`` the chat
    history); ``scorer``: an `InformationGainScorer`; ``info_gain_type``: overrides the scorer's own.
    """

    def __init__(self, env: gym.Env, scorer: InformationGainScorer, info_gain_type: str | None = None):
        super().__init__(env)
        self.scorer = scorer
        self.info_gain_type = info_gain_type or scorer.info_gain_type
        information_gain(0.0, 0.0, self.info_gain_type)  # validate the name now
        self.beliefs: list[float] = []

    def _gold(self):
        item = getattr(self.env.unwrapped, "item", None)
        if item is None or not getattr(item, "golden_answers", None):
            raise RuntimeError("InformationGainWrapper needs env.unwrapped.item.golden_answers (the current QA item)")
        return item.golden_answers

    def _belief(self, info: dict) -> float:
        if "messages" not in info:
            raise RuntimeError("InformationGainWrapper needs info['messages'] (the chat history) from the env")
        return self.scorer.current_belief(info["messages"], self._gold())

    def reset(self, *, seed=None, options=None):
        observation, info = self.env.reset(seed=seed, options=options)
        self.beliefs = [self._belief(info)]
        info["beliefs"], info["information_gain"] = list(self.beliefs), 0.0
        return observation, info

    def step(self, action):
        observation, reward, terminated, truncated, info = self.env.step(action)
        gain = 0.0
        if info.get("action", {}).get("kind") in TOOLS:
            self.beliefs.append(self._belief(info))
            gain = float(information_gain(self.beliefs[-2], self.beliefs[-1], self.info_gain_type))
            reward = reward + gain
        info["beliefs"], info["information_gain"] = list(self.beliefs), gain
        return observation, reward, terminated, truncated, info


@lru_cache(maxsize=4)
def _cached_scorer(path: str, protocol: str, probe_style: str, device: str) -> InformationGainScorer:
    return InformationGainScorer.from_pretrained(path, protocol=protocol, probe_style=probe_style, device=device)


def wrap_with_information_gain(
    env: gym.Env,
    scorer,
    *,
    info_gain_type: str = "prob_diff",
    probe_style: str = "answer",
    device: str = "cpu",
) -> InformationGainWrapper:
    """Wrap ``env`` so its tool turns earn information gain under ``scorer`` (a scorer, or a model path to load).

    A path is loaded once per process (cached), with the env's own protocol (``env.unwrapped.protocol``).
    """
    if not isinstance(scorer, InformationGainScorer):
        protocol = getattr(env.unwrapped, "protocol", "tag")
        scorer = _cached_scorer(str(scorer), protocol, probe_style, device)
    return InformationGainWrapper(env, scorer, info_gain_type)
