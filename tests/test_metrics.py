"""Contract tests of igpo_envs.metrics: SQuAD normalisation, exact match, token F1 (max over golds)."""

from __future__ import annotations

import pytest

from igpo_envs.metrics import exact_match, f1_score, normalize_answer


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  an   apple, a pear ", "apple pear"),
        ("Theater", "theater"),  # "the" only as a whole word
        ("U.S.A.", "usa"),
        ("Röntgen", "röntgen"),
        ("", ""),
        ("A", ""),
    ],
)
def test_normalize_answer(raw, normalized):
    assert normalize_answer(raw) == normalized


def test_exact_match():
    assert exact_match("the Eiffel tower", ["Eiffel Tower"]) == 1.0
    assert exact_match("Eiffel", ["Eiffel Tower"]) == 0.0
    assert exact_match("paris", ["London", "Paris"]) == 1.0  # any alias
    assert exact_match("paris", "Paris") == 1.0  # a single string gold
    assert exact_match("paris", []) == 0.0


def test_f1_hand_computed():
    # pred {new, york, city} vs gold {new, york}: p = 2/3, r = 1 -> F1 = 0.8
    assert f1_score("New York City", ["New York"]) == pytest.approx(0.8)
    # pred {a1: barack, obama} vs gold {barack, hussein, obama}: p = 1, r = 2/3 -> 0.8
    assert f1_score("Barack Obama", "Barack Hussein Obama") == pytest.approx(0.8)
    # multiset: pred {the->dropped, cat, cat} vs gold {cat}: common 1, p = 1/2, r = 1 -> 2/3
    assert f1_score("cat cat", "cat") == pytest.approx(2 / 3)
    assert f1_score("dog", "cat") == 0.0
    # max over aliases
    assert f1_score("New York", ["York", "New York"]) == 1.0
    # empty after normalisation: 1 only if both are empty
    assert f1_score("the", "a") == 1.0 and f1_score("the", "cat") == 0.0
    assert f1_score("cat", []) == 0.0
