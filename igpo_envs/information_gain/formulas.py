"""IGPO's information-gain turn rewards, each one short function that reads like its equation.

``v_k`` is the belief after k observations (mean log-prob of the gold answer tokens, see `answer_logprobs`).
The functions accept Python floats or torch tensors alike.
"""

from __future__ import annotations

import math

INFO_GAIN_TYPES = ("prob_diff", "log_prob_diff")


def _exp(v):
    return v.exp() if hasattr(v, "exp") else math.exp(v)


def prob_diff(v_prev, v_k):
    """IG_k = exp(v_k) - exp(v_{k-1}): the gain in (geometric-mean) answer probability. The paper's default."""
    return _exp(v_k) - _exp(v_prev)


def log_prob_diff(v_prev, v_k):
    """IG_k = v_k - v_{k-1}: the gain in mean answer log-probability. The released training script's choice."""
    return v_k - v_prev


INFO_GAINS = {"prob_diff": prob_diff, "log_prob_diff": log_prob_diff}


def information_gain(v_prev, v_k, kind: str = "prob_diff"):
    """The reward of one tool turn that moved the belief from ``v_prev`` to ``v_k``."""
    if kind not in INFO_GAINS:
        raise ValueError(f"unknown info_gain_type {kind!r}; expected one of {INFO_GAIN_TYPES}")
    return INFO_GAINS[kind](v_prev, v_k)


def information_gains(beliefs, kind: str = "prob_diff"):
    """The K tool-turn rewards IG_1..IG_K from the K+1 beliefs v_0..v_K (a tensor in, a tensor out; else a list)."""
    if kind not in INFO_GAINS:
        raise ValueError(f"unknown info_gain_type {kind!r}; expected one of {INFO_GAIN_TYPES}")
    if len(beliefs) == 0:
        raise ValueError("information_gains needs at least v_0; got no beliefs")
    if hasattr(beliefs, "exp") and getattr(beliefs, "ndim", 0) == 1:  # a 1-D tensor: vectorised
        return INFO_GAINS[kind](beliefs[:-1], beliefs[1:])
    return [INFO_GAINS[kind](v_prev, v_k) for v_prev, v_k in zip(beliefs[:-1], beliefs[1:])]
