"""IGPO turn advantages for one group of rollouts of the same question (arXiv 2510.14967, Sec. 3).

A group is ``rewards[i]`` = the turn rewards of rollout i in order: the information-gain rewards of its tool turns,
then its outcome reward(s) last. Advantages are computed in two steps, each one small function:

1. normalise within the group (`normalize_joint`: one mean/std over every turn reward of every rollout, the paper's
   default; `normalize_separate`: IG rewards among themselves, outcome rewards among themselves);
2. discount backwards through the turns (`discounted_returns`: A_t = r~_t + gamma * A_{t+1}).

Statistics use the population std with eps 1e-6; a group whose rewards all agree gets zeros, never NaN. The optional
``std_floor`` (default 0, off) lower-bounds the std used for scaling: with joint normalisation a group whose outcomes
all agree has only tiny IG differences left, and dividing them by their own tiny std turns noise into ±1 advantages.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

EPS = 1e-6
NORMS = ("joint", "separate")


def group_stats(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population standard deviation of ``values`` (0, 0 for an empty sequence)."""
    if not values:
        return 0.0, 0.0
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def standardize(values: Sequence[float], *, std_floor: float = 0.0) -> list[float]:
    """(x - mean) / (max(std, std_floor) + eps); all zeros when the values do not vary at all."""
    mean, std = group_stats(values)
    if std <= EPS and std_floor <= 0.0:  # zero variance: no learning signal, and no 0/eps blow-up of rounding noise
        return [0.0] * len(values)
    return [(v - mean) / (max(std, std_floor) + EPS) for v in values]


def normalize_joint(rewards: Sequence[Sequence[float]], *, std_floor: float = 0.0) -> list[list[float]]:
    """Normalise every turn reward of every rollout with one group mean and std (the paper's default)."""
    flat = standardize([r for turns in rewards for r in turns], std_floor=std_floor)
    out, start = [], 0
    for turns in rewards:
        out.append(flat[start : start + len(turns)])
        start += len(turns)
    return out


def normalize_separate(
    rewards: Sequence[Sequence[float]], *, num_outcome: int = 1, std_floor: float = 0.0
) -> list[list[float]]:
    """Normalise the IG (tool-turn) rewards among themselves and the last ``num_outcome`` (outcome) rewards among
    themselves."""
    ig = normalize_joint([turns[: len(turns) - num_outcome] for turns in rewards], std_floor=std_floor)
    outcome = normalize_joint([turns[len(turns) - num_outcome :] for turns in rewards], std_floor=std_floor)
    return [i + o for i, o in zip(ig, outcome)]


def discounted_returns(rewards: Sequence[float], gamma: float = 1.0) -> list[float]:
    """A_t = r_t + gamma * A_{t+1}, computed backwards from the last turn."""
    returns, running = [0.0] * len(rewards), 0.0
    for t in range(len(rewards) - 1, -1, -1):
        running = rewards[t] + gamma * running
        returns[t] = running
    return returns


def turn_advantages(
    rewards: Sequence[Sequence[float]],
    *,
    gamma: float = 1.0,
    norm: str = "joint",
    num_outcome: int = 1,
    std_floor: float = 0.0,
) -> list[list[float]]:
    """Turn advantages of one group: ``rewards[i]`` = turn rewards of rollout i, the last ``num_outcome`` = outcome.

    Returns one list per rollout with one advantage per turn: group-normalised rewards (``norm`` = "joint" or
    "separate"), discounted backwards with ``gamma``.
    """
    _check_group(rewards, gamma=gamma, norm=norm, num_outcome=num_outcome, std_floor=std_floor)
    if norm == "joint":
        normalized = normalize_joint(rewards, std_floor=std_floor)
    else:
        normalized = normalize_separate(rewards, num_outcome=num_outcome, std_floor=std_floor)
    return [discounted_returns(turns, gamma) for turns in normalized]


def _check_group(rewards, *, gamma: float, norm: str, num_outcome: int, std_floor: float) -> None:
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    if num_outcome < 1:
        raise ValueError(f"num_outcome must be >= 1, got {num_outcome}")
    if std_floor < 0.0:
        raise ValueError(f"std_floor must be >= 0, got {std_floor}")
    for i, turns in enumerate(rewards):
        if len(turns) < num_outcome:
            raise ValueError(
                f"rollout {i} has {len(turns)} turn rewards; each needs at least num_outcome={num_outcome} "
                "(its outcome)"
            )
        for t, r in enumerate(turns):
            if not math.isfinite(r):
                raise ValueError(f"rollout {i}, turn {t}: reward {r!r} is not finite")
