"""IGPO turn advantages against hand-computed groups (DESIGN.md contract) and the per-token broadcast."""

import math

import pytest

from igpo_trainer.advantages import (
    discounted_returns,
    normalize_joint,
    normalize_separate,
    standardize,
    turn_advantages,
)
from igpo_trainer.rollout import broadcast_turn_advantages, group_turn_advantages


def approx(nested, expected, tol=1e-5):
    assert len(nested) == len(expected)
    for got, want in zip(nested, expected):
        assert got == pytest.approx(want, abs=tol)


# A group of 3 rollouts: rollout 0 searched twice then answered right; 1 searched once then wrong; 2 answered at once.
GROUP = [[0.2, 0.4, 1.0], [0.0, 0.0], [0.6]]
FLAT = [0.2, 0.4, 1.0, 0.0, 0.0, 0.6]


def test_joint_normalisation_by_hand():
    mean = sum(FLAT) / 6  # 0.3666...
    std = math.sqrt(sum((r - mean) ** 2 for r in FLAT) / 6)  # population std
    z = [(r - mean) / (std + 1e-6) for r in FLAT]
    approx(normalize_joint(GROUP), [z[0:3], z[3:5], z[5:6]])
    # gamma = 1: A_t is the sum of normalised rewards from turn t on
    approx(
        turn_advantages(GROUP),
        [[z[0] + z[1] + z[2], z[1] + z[2], z[2]], [z[3] + z[4], z[4]], [z[5]]],
    )


def test_joint_numbers_literal():
    # rewards 0, 1 in one group: mean 0.5, population std 0.5 -> -1, +1
    approx(turn_advantages([[0.0], [1.0]]), [[-1.0], [1.0]])
    # two turns: [[0, 1], [1]] -> mean 2/3, std sqrt(2)/3
    s = math.sqrt(2) / 3
    a, b, c = (0 - 2 / 3) / s, (1 - 2 / 3) / s, (1 - 2 / 3) / s
    approx(turn_advantages([[0.0, 1.0], [1.0]]), [[a + b, b], [c]])


def test_separate_normalisation_by_hand():
    ig = [0.2, 0.4, 0.0]  # the tool-turn rewards of the group
    out = [1.0, 0.0, 0.6]  # the outcomes
    zi = standardize(ig)
    zo = standardize(out)
    approx(normalize_separate(GROUP), [[zi[0], zi[1], zo[0]], [zi[2], zo[1]], [zo[2]]])
    m, s = sum(out) / 3, math.sqrt(sum((o - sum(out) / 3) ** 2 for o in out) / 3)
    assert zo[0] == pytest.approx((1.0 - m) / (s + 1e-6))
    approx(
        turn_advantages(GROUP, norm="separate"),
        [[zi[0] + zi[1] + zo[0], zi[1] + zo[0], zo[0]], [zi[2] + zo[1], zo[1]], [zo[2]]],
    )


def test_gamma_below_one_discounts_later_turns():
    assert discounted_returns([1.0, 2.0, 3.0], gamma=0.5) == pytest.approx([1 + 0.5 * (2 + 0.5 * 3), 2 + 1.5, 3.0])
    z = normalize_joint(GROUP)
    got = turn_advantages(GROUP, gamma=0.9)
    assert got[0] == pytest.approx([z[0][0] + 0.9 * z[0][1] + 0.81 * z[0][2], z[0][1] + 0.9 * z[0][2], z[0][2]])
    approx(turn_advantages(GROUP, gamma=0.0), z)  # gamma 0: each turn keeps only its own normalised reward


def test_zero_variance_gives_zeros_not_nan():
    assert turn_advantages([[1.0, 1.0], [1.0]]) == [[0.0, 0.0], [0.0]]
    assert turn_advantages([[-2.0], [-2.0], [-2.0]]) == [[0.0], [0.0], [0.0]]
    # separate: IG rewards agree among themselves and outcomes agree among themselves -> all zeros
    assert turn_advantages([[0.5, 1.0], [0.5, 1.0]], norm="separate") == [[0.0, 0.0], [0.0, 0.0]]
    # separate with constant outcomes but varying IG: outcome part zero, IG part normalised, nothing NaN
    adv = turn_advantages([[0.1, 0.0], [0.3, 0.0]], norm="separate")
    assert adv == [[pytest.approx(-1.0, abs=1e-4), 0.0], [pytest.approx(1.0, abs=1e-4), 0.0]]


def test_std_floor_tames_noise_in_all_wrong_groups():
    # every answer wrong (outcome 0) and IG rewards of ~1e-5: joint normalisation blows the noise up to ~±1
    group = [[1e-5, 0.0], [-1e-5, 0.0], [0.0]]
    raw = turn_advantages(group)
    assert max(abs(a) for turns in raw for a in turns) > 0.5
    floored = turn_advantages(group, std_floor=0.1)
    assert max(abs(a) for turns in floored for a in turns) < 1e-3
    # a group with real variance is unchanged by a floor below its std
    assert turn_advantages([[0.0], [1.0]], std_floor=0.1) == turn_advantages([[0.0], [1.0]])


def test_outcome_only_group_is_grpo():
    outcomes = [1.0, 0.0, 0.5, 0.5]
    m = sum(outcomes) / 4
    s = math.sqrt(sum((o - m) ** 2 for o in outcomes) / 4)
    got = turn_advantages([[o] for o in outcomes])
    assert [a[0] for a in got] == pytest.approx([(o - m) / (s + 1e-6) for o in outcomes])


def test_invalid_input_is_rejected_clearly():
    with pytest.raises(ValueError, match="norm"):
        turn_advantages([[1.0]], norm="both")
    with pytest.raises(ValueError, match="gamma"):
        turn_advantages([[1.0]], gamma=1.5)
    with pytest.raises(ValueError, match="rollout 1"):
        turn_advantages([[1.0], []])
    with pytest.raises(ValueError, match="not finite"):
        turn_advantages([[float("nan")], [1.0]])
    with pytest.raises(ValueError, match="groups of 4"):
        group_turn_advantages([[1.0]] * 6, 4, gamma=1.0, norm="joint")


def test_broadcast_puts_turn_advantage_on_every_policy_token():
    token_turn = [0, 0, -1, -1, 1, 1, 1, -1, 2, -1]
    assert broadcast_turn_advantages(token_turn, [0.5, -1.0, 2.0]) == [0.5, 0.5, 0, 0, -1, -1, -1, 0, 2, 0]
    # outcome only: one advantage on every policy token of every turn
    assert broadcast_turn_advantages(token_turn, [0.7]) == [0.7, 0.7, 0, 0, 0.7, 0.7, 0.7, 0, 0.7, 0]


def test_group_turn_advantages_counts_collapsed_groups():
    rewards = [[1.0], [1.0], [0.0], [1.0]]  # group 0 all right (collapsed), group 1 mixed
    adv, collapsed = group_turn_advantages(rewards, 2, gamma=1.0, norm="joint")
    assert collapsed == 0.5
    assert adv[:2] == [[0.0], [0.0]]
    assert adv[2][0] < 0 < adv[3][0]
