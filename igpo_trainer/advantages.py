"""IGPO turn advantages for one group of rollouts of the same question (arXiv 2510.14967, Sec. 3).

A group is ``rewards[i]`` = the turn rewards of rollout i in order: the information-gain rewards of its tool turns,
then its outcome reward(s) last. Advantages are computed in two steps, each one small function:

1. normalise within the group (`normalize_joint`: one mean/std over every turn reward of every rollout, the paper's
   default; `normalize_separate`: IG rewards among themselves, outcome rewards among themselves);
2. discount backwards through the turns (`discounted_returns`: A_t = r_t + gamma * A_{t+1}).

`standardize` is the official code's form, ``(x - mean) / (sqrt(var + 1e-8) + 1e-6)`` with the population variance:
the 1e-8 inside the root is an implicit std floor of 1e-4, so a group whose outcomes all agree and whose IGs differ by
~1e-5 (belief noise) gets advantages of about ±0.1, not ±1. ``std_floor`` (default 0, off) raises that floor further;
``scale=False`` only centres (TRL's ``scale_rewards="none"``). A group whose rewards are all equal gets zeros.

`finite_turn_advantages` is what the trainer calls: a rollout with a non-finite reward (a NaN belief, a broken reward
function) gets zero advantages and stays out of its group's statistics, so one bad rollout cannot end a run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

EPS = 1e-6  # added to the std (official code and igpo)
VAR_EPS = 1e-8  # added to the variance under the root (official code): std >= 1e-4
NORMS = ("joint", "separate")


def group_stats(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population standard deviation of ``values`` (0, 0 for an empty sequence)."""
    if not values:
        return 0.0, 0.0
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def standardize(values: Sequence[float], *, std_floor: float = 0.0, scale: bool = True) -> list[float]:
    """(x - mean) / (max(sqrt(var + 1e-8), std_floor) + 1e-6); only x - mean when ``scale`` is False."""
    if not values or max(values) == min(values):  # no learning signal (and no rounding noise blown up)
        return [0.0] * len(values)
    mean, std = group_stats(values)
    if not scale:
        return [v - mean for v in values]
    denominator = max(math.sqrt(std**2 + VAR_EPS), std_floor) + EPS
    return [(v - mean) / denominator for v in values]


def normalize_joint(
    rewards: Sequence[Sequence[float]], *, std_floor: float = 0.0, scale: bool = True
) -> list[list[float]]:
    """Normalise every turn reward of every rollout with one group mean and std (the paper's default)."""
    flat = standardize([r for turns in rewards for r in turns], std_floor=std_floor, scale=scale)
    out, start = [], 0
    for turns in rewards:
        out.append(flat[start : start + len(turns)])
        start += len(turns)
    return out


def normalize_separate(
    rewards: Sequence[Sequence[float]], *, num_outcome: int = 1, std_floor: float = 0.0, scale: bool = True
) -> list[list[float]]:
    """Normalise the IG (tool-turn) rewards among themselves and the last ``num_outcome`` (outcome) rewards among
    themselves."""
    ig = normalize_joint([turns[: len(turns) - num_outcome] for turns in rewards], std_floor=std_floor, scale=scale)
    outcome = normalize_joint(
        [turns[len(turns) - num_outcome :] for turns in rewards], std_floor=std_floor, scale=scale
    )
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
    scale: bool = True,
) -> list[list[float]]:
    """Turn advantages of one group: ``rewards[i]`` = turn rewards of rollout i, the last ``num_outcome`` = outcome.

    Returns one list per rollout with one advantage per turn: group-normalised rewards (``norm`` = "joint" or
    "separate"), discounted backwards with ``gamma``. Raises ValueError on a non-finite reward.
    """
    _check_group(rewards, gamma=gamma, norm=norm, num_outcome=num_outcome, std_floor=std_floor)
    if norm == "joint":
        normalized = normalize_joint(rewards, std_floor=std_floor, scale=scale)
    else:
        normalized = normalize_separate(rewards, num_outcome=num_outcome, std_floor=std_floor, scale=scale)
    return [discounted_returns(turns, gamma) for turns in normalized]


def is_finite_rollout(turn_rewards: Sequence[float]) -> bool:
    """Whether every turn reward of a rollout is a finite number."""
    return all(math.isfinite(r) for r in turn_rewards)


def finite_turn_advantages(rewards: Sequence[Sequence[float]], **kwargs) -> list[list[float]]:
    """`turn_advantages` over the rollouts whose rewards are all finite; the others get zero advantages."""
    finite = [is_finite_rollout(turns) for turns in rewards]
    kept = iter(turn_advantages([t for t, ok in zip(rewards, finite) if ok], **kwargs) if any(finite) else [])
    return [next(kept) if ok else [0.0] * len(turns) for turns, ok in zip(rewards, finite)]


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
