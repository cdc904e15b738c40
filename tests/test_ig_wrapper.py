"""InformationGainWrapper on a real SearchQAEnv episode, scored by a tiny random model."""

import math

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import gymnasium as gym  # noqa: E402

import igpo_envs  # noqa: E402,F401  (registers the env ids)
from igpo_envs.information_gain import (  # noqa: E402
    InformationGainScorer,
    InformationGainWrapper,
    information_gain,
    wrap_with_information_gain,
)
from igpo_envs.types import Passage, QAItem  # noqa: E402

PASSAGES = {
    "dark orbit": Passage("p1", "Dark Orbit", "Dark Orbit is a film directed by Marlo Vesk."),
    "marlo vesk": Passage("p2", "Marlo Vesk", "Marlo Vesk is a director born in Tavella."),
}
ITEM = QAItem("q1", "Where was the director of Dark Orbit born?", ("Tavella", "Tavella, Norway"))


class MemoryRetriever:
    """Exact-title lookup: enough to give the env real observations."""

    content_hash = "memory"

    def search(self, queries, topk):
        return [[PASSAGES[q.strip().lower()]] if q.strip().lower() in PASSAGES else [] for q in queries]


@pytest.fixture(scope="module")
def scorer():
    from igpo_trainer.tiny import train_tokenizer

    tokenizer = train_tokenizer([p.text for p in PASSAGES.values()] * 5 + [ITEM.question] * 5, vocab_size=400)
    config = transformers.Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2,
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    return InformationGainScorer(model, tokenizer)


def make_env(protocol="tag", max_turns=10):
    return gym.make("igpo/SearchQA-v0", questions=[ITEM], retriever=MemoryRetriever(), protocol=protocol,
                    max_turns=max_turns)


def test_search_turns_earn_information_gain(scorer):
    env = InformationGainWrapper(make_env(), scorer)
    _, info = env.reset(seed=0)
    assert info["information_gain"] == 0.0
    assert info["beliefs"] == [pytest.approx(scorer.current_belief(info["messages"], "Tavella"))]

    rewards, beliefs = [], info["beliefs"]
    for query in ("Dark Orbit", "Marlo Vesk"):
        _, reward, terminated, truncated, info = env.step(f"<search> {query} </search>")
        assert not (terminated or truncated)
        assert len(info["beliefs"]) == len(beliefs) + 1 and info["beliefs"][:-1] == beliefs
        beliefs = info["beliefs"]
        expected = math.exp(beliefs[-1]) - math.exp(beliefs[-2])  # prob_diff, env reward 0 on a search
        assert reward == pytest.approx(expected) and info["information_gain"] == pytest.approx(expected)
        rewards.append(reward)
    assert any(abs(r) > 1e-6 for r in rewards)  # the observations moved the belief

    # Incremental beliefs equal one packed pass over the finished history (first alias scored).
    assert beliefs == pytest.approx(scorer.message_beliefs(info["messages"], ITEM.golden_answers), abs=1e-4)

    _, reward, terminated, _, info = env.step("<answer> Tavella </answer>")
    assert terminated and reward == 1.0 and info["information_gain"] == 0.0 and info["beliefs"] == beliefs


def test_log_prob_diff_and_invalid_turns(scorer):
    env = InformationGainWrapper(make_env(), scorer, info_gain_type="log_prob_diff")
    env.reset(seed=0)
    _, reward, _, _, info = env.step("<search> Dark Orbit </search>")
    assert reward == pytest.approx(info["beliefs"][1] - info["beliefs"][0])
    _, reward, terminated, _, info = env.step("<search> unclosed")
    assert terminated and reward == -2.0 and info["information_gain"] == 0.0 and len(info["beliefs"]) == 2


def test_truncating_search_still_scored(scorer):
    env = InformationGainWrapper(make_env(max_turns=1), scorer)
    env.reset(seed=0)
    _, reward, terminated, truncated, info = env.step("<search> Marlo Vesk </search>")
    assert truncated and not terminated and len(info["beliefs"]) == 2
    # The env's own reward for ending without an answer, plus the search's information gain.
    no_answer = getattr(env.unwrapped, "no_answer_reward", 0.0)
    assert reward == pytest.approx(no_answer + information_gain(*info["beliefs"], "prob_diff"))


def test_wrap_with_information_gain_loads_a_path_with_the_env_protocol(tmp_path, scorer):
    scorer.model.save_pretrained(tmp_path)
    scorer.tokenizer.save_pretrained(tmp_path)
    env = wrap_with_information_gain(make_env(protocol="tool_call"), tmp_path)
    assert env.scorer.protocol == "tool_call" and not env.scorer.model.training
    assert wrap_with_information_gain(make_env(protocol="tool_call"), tmp_path).scorer is env.scorer  # loaded once
    env.reset(seed=0)
    call = '<tool_call>{"name": "search", "arguments": {"query": "Dark Orbit"}}</tool_call>'
    _, reward, _, _, info = env.step(call)
    assert info["messages"][-1]["role"] == "tool" and len(info["beliefs"]) == 2
    assert reward == pytest.approx(info["information_gain"]) and info["information_gain"] != 0.0


def test_unknown_info_gain_type_is_rejected(scorer):
    with pytest.raises(ValueError, match="unknown info_gain_type"):
        InformationGainWrapper(make_env(), scorer, info_gain_type="kl")
