"""The offline real tokenizers are the real ones: ids checked against Qwen2.5's and SmolLM2's published vocabularies."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")


@pytest.mark.parametrize("text, ids", [
    ("Hello world", [9707, 1879]),
    ("Hello, world!", [9707, 11, 1879, 0]),
    ("<|im_start|>user\nhi<|im_end|>", [151644, 872, 198, 6023, 151645]),
    ("12345", [16, 17, 18, 19, 20]),  # Qwen splits numbers into single digits
])
def test_qwen25_ids_match_qwen25(qwen_tokenizer, text, ids):
    assert qwen_tokenizer(text)["input_ids"] == ids


def test_qwen25_added_tokens_and_template(qwen_tokenizer):
    assert len(qwen_tokenizer) == 151665
    assert qwen_tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<tool_call>", "</tool_call>"]) == [
        151643, 151657, 151658]
    assert qwen_tokenizer.eos_token == "<|im_end|>"
    # <tool_call> is added but not special (Qwen2.5 keeps it when skipping special tokens).
    assert qwen_tokenizer.decode([151657, 151645], skip_special_tokens=True) == "<tool_call>"
    text = qwen_tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                              add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_byte_level_bpe_writes_the_leading_space_into_the_word(real_tokenizer):
    """The merge that breaks separately-tokenised probes: " Paris" is one token, not a space then "Paris"."""
    tokens = real_tokenizer.convert_ids_to_tokens(real_tokenizer("<answer> Paris </answer>")["input_ids"])
    assert tokens == ["<", "answer", ">", "ĠParis", "Ġ</", "answer", ">"]


def test_smollm2_is_a_real_chat_model(smollm2_path, smollm2_tokenizer):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(smollm2_path))
    assert config.model_type == "llama" and config.hidden_size == 576 and config.num_hidden_layers == 30
    assert smollm2_tokenizer.convert_tokens_to_ids("<|im_start|>") == 1
    text = smollm2_tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                                 add_generation_prompt=True)
    assert "<|im_start|>user\nhi<|im_end|>" in text and text.endswith("<|im_start|>assistant\n")
