"""The tiny local model builder: offline, round-trips text exactly, saves a model TRL can reload."""

import pytest

torch = pytest.importorskip("torch")

from igpo_trainer.tiny import PROTOCOL_TAGS, build_tiny_model, load_tiny  # noqa: E402

TEXTS = ["Marlo Vesk directed the film Dark Orbit. He was born in Tavella."] * 20


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_build_and_reload(tmp_path, arch):
    path = build_tiny_model(tmp_path / arch, TEXTS, arch=arch, vocab_size=400, hidden_size=32, num_layers=2)
    model, tokenizer = load_tiny(path)
    assert model.config.model_type == arch
    assert model.config.vocab_size >= len(tokenizer)  # every token id has an embedding row
    assert model.config._name_or_path == str(path)
    ids = torch.tensor([tokenizer("<search> Marlo Vesk </search>")["input_ids"]])
    assert model(ids).logits.shape[-1] == model.config.vocab_size


def test_tokenizer_round_trips_protocol_text(tmp_path):
    _, tokenizer = load_tiny(build_tiny_model(tmp_path, TEXTS, vocab_size=400, hidden_size=32, num_layers=1))
    text = '<think> x </think><tool_call>{"name": "search", "arguments": {"query": "Marlo Vesk"}}</tool_call>'
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    for tag in PROTOCOL_TAGS:  # tags are atomic tokens
        assert len(tokenizer(tag, add_special_tokens=False)["input_ids"]) == 1
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token_id != tokenizer.eos_token_id


def test_unknown_arch_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown arch"):
        build_tiny_model(tmp_path, TEXTS, arch="gpt9", vocab_size=300)
