"""IGPO turn advantages against hand-computed groups (DESIGN.md contract) and the per-token broadcast."""

import math

import pytest

from igpo_trainer.advantages import (
    discounted_returns,
    finite_turn_advantages,
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


def official_scale(values):
    """The official IGPO code's denominator: sqrt(population variance + 1e-8) + 1e-6."""
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values) + 1e-8) + 1e-6


# A group of 3 rollouts: rollout 0 searched twice then answered right; 1 searched once then wrong; 2 answered at once.
GROUP = [[0.2, 0.4, 1.0], [0.0, 0.0], [0.6]]
FLAT = [0.2, 0.4, 1.0, 0.0, 0.0, 0.6]


def test_joint_normalisation_by_hand():
    mean = sum(FLAT) / 6  # 0.3666...
    z = [(r - mean) / official_scale(FLAT) for r in FLAT]
    approx(normalize_joint(GROUP), [z[0:3], z[3:5], z[5:6]])
    # gamma = 1: A_t is the sum of normalised rewards from turn t on
    approx(
        turn_advantages(GROUP),
        [[z[0] + z[1] + z[2], z[1] + z[2], z[2]], [z[3] + z[4], z[4]], [z[5]]],
    )


def test_joint_numbers_literal():
    # rewards 0, 1 in one group: mean 0.5, population std 0.5 -> -1, +1 (to 4e-8: 1e-8 under the root, 1e-6 added)
    approx(turn_advantages([[0.0], [1.0]]), [[-1.0], [1.0]])
    # two turns: [[0, 1], [1]] -> mean 2/3, std sqrt(2)/3
    s = math.sqrt(2 / 9 + 1e-8) + 1e-6
    a, b, c = (0 - 2 / 3) / s, (1 - 2 / 3) / s, (1 - 2 / 3) / s
    approx(turn_advantages([[0.0, 1.0], [1.0]]), [[a + b, b], [c]])


def test_separate_normalisation_by_hand():
    ig = [0.2, 0.4, 0.0]  # the tool-turn rewards of the group
    out = [1.0, 0.0, 0.6]  # the outcomes
    zi = standardize(ig)
    zo = standardize(out)
    approx(normalize_separate(GROUP), [[zi[0], zi[1], zo[0]], [zi[2], zo[1]], [zo[2]]])
    assert zo[0] == pytest.approx((1.0 - sum(out) / 3) / official_scale(out))
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


def test_noise_only_group_stays_small_as_in_the_official_code():
    # Every answer wrong (outcome 0) and IGs that differ by ~1e-5 (belief noise). Dividing by the bare std (+1e-6)
    # would turn this noise into advantages of about ±1.6; the official sqrt(var + 1e-8) keeps them at about ±0.2.
    group = [[1e-5, 0.0], [-1e-5, 0.0], [2e-5, 0.0], [-2e-5, 0.0], [0.0]]
    flat = [r for turns in group for r in turns]
    mean = sum(flat) / len(flat)
    bare_std = math.sqrt(sum((r - mean) ** 2 for r in flat) / len(flat))
    assert max(abs(r - mean) / (bare_std + 1e-6) for r in flat) > 1.0  # the noise blow-up the default avoids
    raw = turn_advantages(group)
    largest = max(abs(a) for turns in raw for a in turns)
    assert 0.1 <= largest <= 0.2
    z = [(r - mean) / official_scale(flat) for r in flat]  # the official normalisation, then gamma = 1 sums
    approx(raw, [[z[0] + z[1], z[1]], [z[2] + z[3], z[3]], [z[4] + z[5], z[5]], [z[6] + z[7], z[7]], [z[8]]], tol=1e-9)
    floored = turn_advantages(group, std_floor=0.1)  # a larger floor shrinks such groups further
    assert max(abs(a) for turns in floored for a in turns) < 1e-3
    # a group with real variance is unchanged by a floor below its std
    assert turn_advantages([[0.0], [1.0]], std_floor=0.1) == turn_advantages([[0.0], [1.0]])


def test_scale_false_only_centres():
    assert turn_advantages([[0.0], [1.0], [0.5]], scale=False) == [[-0.5], [0.5], [0.0]]
    assert turn_advantages([[0.2, 1.0], [0.0]], scale=False, norm="separate") == [
        [pytest.approx(0.0 + 0.5), pytest.approx(0.5)], [pytest.approx(-0.5)]]


def test_non_finite_rollout_gets_zero_advantage_and_leaves_the_statistics():
    nan, inf = float("nan"), float("inf")
    group = [[0.1, 1.0], [nan, 0.0], [0.0], [0.2, inf]]
    got = finite_turn_advantages(group)
    assert got[1] == [0.0, 0.0] and got[3] == [0.0, 0.0]
    assert [got[0], got[2]] == turn_advantages([[0.1, 1.0], [0.0]])  # the others as if the bad ones were absent
    assert finite_turn_advantages([[nan], [inf]]) == [[0.0], [0.0]]
    adv, collapsed = group_turn_advantages([[1.0], [nan], [0.0], [1.0]], 2, gamma=1.0, norm="joint")
    assert adv[:2] == [[0.0], [0.0]] and collapsed == 0.5  # a lone finite rollout has no one to compare with


def test_outcome_only_group_is_grpo():
    outcomes = [1.0, 0.0, 0.5, 0.5]
    m = sum(outcomes) / 4
    got = turn_advantages([[o] for o in outcomes])
    assert [a[0] for a in got] == pytest.approx([(o - m) / official_scale(outcomes) for o in outcomes])


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
