"""The vLLM backend stops turns where the transformers backend does: the same closing tags reach vLLM's
SamplingParams (through TRL's own VLLMGeneration.generate), for both protocols, with the tag kept in the turn."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("trl")

from test_faithfulness import RecordingSamplingParams, trl_vllm_generation

from igpo_trainer.rollout import STOP_STRINGS, VLLMTurnGenerator, vllm_generation_kwargs


@pytest.mark.parametrize("protocol", sorted(STOP_STRINGS))
def test_sampling_params_get_the_protocols_stop_strings(protocol, monkeypatch):
    generation = trl_vllm_generation("colocate", monkeypatch)
    generation.generation_kwargs = vllm_generation_kwargs(protocol)
    VLLMTurnGenerator(SimpleNamespace(vllm_generation=generation))([[1, 2, 3]], 16)
    (params,) = RecordingSamplingParams.made
    assert params["stop"] == list(STOP_STRINGS[protocol])  # what HFTurnGenerator stops at
    assert params["include_stop_str_in_output"] is True  # the closing tag stays in the turn the env parses
    assert params["max_tokens"] == 16


def test_user_generation_kwargs_win():
    kwargs = vllm_generation_kwargs("tag", {"stop": ["</answer>"], "min_p": 0.1})
    assert kwargs == {"stop": ["</answer>"], "include_stop_str_in_output": True, "min_p": 0.1}


def test_the_stop_strings_are_text_not_single_tokens_in_real_vocabularies(real_tokenizer):
    """vLLM matches stop *strings* on the detokenised text, so a tag spelled as several BPE tokens still stops it;
    the transformers backend needs StopStringCriteria for the same reason (tests/test_real_tokenizers.py)."""
    for stops in STOP_STRINGS.values():
        multi = [s for s in stops if len(real_tokenizer(s, add_special_tokens=False)["input_ids"]) > 1]
        assert "</answer>" in multi
