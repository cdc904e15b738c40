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
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                           add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token_id != tokenizer.eos_token_id


def test_unknown_arch_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown arch"):
        build_tiny_model(tmp_path, TEXTS, arch="gpt9", vocab_size=300)


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_word_tokenizer_survives_reload(tmp_path, arch):
    """AutoTokenizer rebuilds a Qwen2 checkpoint's tokenizer as Qwen's BPE; load_tokenizer must keep the saved
    word-level one, or every word outside the byte alphabet is silently dropped."""
    from igpo_envs.hf_tokenizer import load_tokenizer

    path = build_tiny_model(tmp_path / arch, TEXTS, arch=arch, vocab_size=400, hidden_size=32, num_layers=1,
                            tokenizer_kind="word")
    tokenizer = load_tokenizer(path)
    ids = tokenizer("<search> Marlo Vesk </search>", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["<search>", "Marlo", "Vesk", "</search>"]
    assert tokenizer.decode(ids) == "<search> Marlo Vesk </search>"
    assert tokenizer.unk_token_id not in tokenizer("Doc 1 (Title: Tavella) born", add_special_tokens=False)["input_ids"]
    _, loaded = load_tiny(path)
    assert loaded("Marlo Vesk")["input_ids"] == tokenizer("Marlo Vesk")["input_ids"]


def test_name_tokenizer_keeps_two_word_names_whole(tmp_path):
    """kind="name": a two-word name is one token (one token to copy off a passage), a three-word alias stays word by
    word (its words are shared across the corpus, so well trained), and decoding gives the text back."""
    from igpo_envs.hf_tokenizer import load_tokenizer

    texts = ["Rovi Tesan, also known as Kesh Dalo Miru, was born in Kala Dimok. The mayor of Kala Dimok is Rovi Tesa."]
    tokenizer = load_tokenizer(build_tiny_model(tmp_path, texts * 5, vocab_size=400, hidden_size=32, num_layers=1,
                                                tokenizer_kind="name"))

    def tokens(text):
        return tokenizer.convert_ids_to_tokens(tokenizer(text, add_special_tokens=False)["input_ids"])

    assert tokens("<search> Rovi Tesan </search>") == ["<search>", "Rovi Tesan", "</search>"]
    assert tokens("of Kesh Dalo Miru, was born in Kala Dimok.") == ["of", "Kesh", "Dalo", "Miru", ",", "was", "born",
                                                                     "in", "Kala Dimok", "."]
    assert tokens("Rovi Tesa") == ["Rovi Tesa"] and tokens("Rovi Tesan") != tokens("Rovi Tesa")  # look-alikes differ
    ids = tokenizer("<answer> Kala Dimok </answer>", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == "<answer> Kala Dimok </answer>"


@pytest.mark.parametrize("kind", ["word", "name"])
def test_word_level_vocabulary_keeps_framing_words(tmp_path, kind):
    """Chat roles, the passage layout's digits and a caller's prompt template are in a word-level vocabulary even when
    the corpus's own words would fill it: they must not become <unk>."""
    from igpo_envs.hf_tokenizer import load_tokenizer

    corpus = [" ".join(f"Name{i} Word{i}" for i in range(k, k + 50)) for k in range(0, 2000, 50)] * 3
    tokenizer = load_tokenizer(build_tiny_model(tmp_path, corpus, vocab_size=300, hidden_size=32, num_layers=1,
                                                tokenizer_kind=kind, framing_texts=["Question: {question}"]))
    ids = tokenizer("user assistant Question: Doc 1 Doc 10", add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.unk_token_id in tokenizer("Word1999", add_special_tokens=False)["input_ids"]  # the vocab is full


def test_word_tokenizer_policy_stops_at_closing_tags(tmp_path):
    """Generation with a word-level vocabulary (HF's StopStringCriteria cannot read it) stops at the closing tag."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    from igpo_envs.hf_tokenizer import load_tokenizer
    from igpo_trainer.rollout import STOP_STRINGS, HFTurnGenerator

    path = build_tiny_model(tmp_path, TEXTS, vocab_size=400, hidden_size=32, num_layers=1, tokenizer_kind="word")
    tokenizer, model = load_tokenizer(path), AutoModelForCausalLM.from_pretrained(path)
    close = tokenizer.convert_tokens_to_ids("</search>")
    # Teach the model one action, repeated, so that greedy decoding writes "</search>" and would go on after it.
    text = tokenizer(" ".join(["<search> Marlo Vesk </search>"] * 6), return_tensors="pt")["input_ids"]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)  # 3e-2 diverged from some initialisations
    for _ in range(200):
        optimizer.zero_grad()
        model(input_ids=text, labels=text).loss.backward()
        optimizer.step()
    config = GenerationConfig(do_sample=False, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    generate = HFTurnGenerator(model, tokenizer, config, STOP_STRINGS["tag"], [tokenizer.eos_token_id])
    prompt = tokenizer("<search> Marlo Vesk </search> <search> Marlo", add_special_tokens=False)["input_ids"]
    (ids, _), (ids2, _) = generate([prompt, prompt[:4]], 12)
    assert tokenizer.decode(ids) == "Vesk </search>"
    assert tokenizer.decode(ids2) == "<search> Marlo Vesk </search>"
    assert ids[-1] == close == ids2[-1]


def test_unknown_tokenizer_kind_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        build_tiny_model(tmp_path, TEXTS, vocab_size=300, tokenizer_kind="char")


def test_stop_token_ids_only_for_atomic_tags(tmp_path):
    from igpo_envs.hf_tokenizer import stop_token_ids

    _, tokenizer = load_tiny(build_tiny_model(tmp_path, TEXTS, vocab_size=400, hidden_size=32, num_layers=1))
    tags = ["</search>", "</answer>"]
    assert stop_token_ids(tokenizer, tags) == tokenizer.convert_tokens_to_ids(tags)
    assert len(tokenizer("Marlo", add_special_tokens=False)["input_ids"]) == 1  # an ordinary one-token word ...
    assert stop_token_ids(tokenizer, ["</search>", "Marlo"]) is None  # ... may be written in pieces: no id stop
    assert stop_token_ids(tokenizer, []) is None
