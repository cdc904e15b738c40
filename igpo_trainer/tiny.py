"""Tiny local models for tests, benchmarks and the CPU demo: no model hub needed.

A tokenizer is trained with `tokenizers` on the texts the model will see: byte-level BPE (the default; words of the
task become whole tokens and decoding round-trips exactly, which the ``tool_call`` protocol's JSON needs) or a
word-level vocabulary (``kind="word"``: one token per word or punctuation mark, so copying a name from a passage is
copying whole tokens, which a 1M-parameter model learns several times faster; decoding joins words with spaces, fine
for the ``tag`` protocol, not for JSON tool calls), or ``kind="name"``: word level with each two-word name of the
synthetic world as one token (the CPU demo's choice: a name is copied off a passage as a single token). A small
Qwen2- or Llama-architecture model is built from a config with random weights. Both are saved with
``save_pretrained`` because TRL reloads the reference model from ``model.config._name_or_path``.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import chain
from pathlib import Path

from igpo_envs.protocol import PROMPT_TEMPLATES

EOS, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
# Protocol tags are kept as single tokens: they decide every parse, so a tiny model should not have to spell them.
PROTOCOL_TAGS = tuple(
    f"<{slash}{tag}>"
    for tag in ("think", "search", "answer", "information", "tool_call", "tool_response", "browse")
    for slash in ("", "/")
)
# Qwen-style chat template: every message framed by <|im_start|>role ... <|im_end|>.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


TOKENIZER_KINDS = ("bpe", "word", "name")
#: ``kind="name"``: words and punctuation as ``"word"``, except that a run of exactly two capitalised words (a person,
#: film, company or city name of the synthetic world: "Rovi Tesan") is one token; longer runs (the world's three-word
#: aliases) stay word by word, so a query built from a question's alias is made of well-trained word tokens.
NAME_RUNS = r"[A-Z][a-z]+(?: [A-Z][a-z]+)+|\w+|[^\w\s]+"
TWO_WORD_NAME = r"^[A-Z][a-z]+ [A-Z][a-z]+$|[^ ]+"
UNK = "<unk>"
#: Words every episode shows besides the task's own: chat roles and the passage layout of observations.
FRAMING_TEXTS = ("system user assistant tool", *(f"Doc {i} (Title: x) y" for i in range(1, 11)))
#: How often the framing texts are counted when training a word-level vocabulary: the vocabulary keeps the most
#: frequent words, and a framing word seen once would lose its place to the task's names (and become <unk>).
FRAMING_WEIGHT = 1000


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048, kind: str = "bpe", framing_texts: Iterable[str] = ()):
    """Train a tokenizer of ``kind`` (``"bpe"``: byte-level BPE; ``"word"``: word level, see the module docstring;
    ``"name"``: word level with two-word names as one token, see `NAME_RUNS`) on ``texts`` and wrap it as a
    transformers fast tokenizer. ``framing_texts`` (e.g. a prompt template) join the protocol's templates and
    `FRAMING_TEXTS`: texts every episode shows, whose words a word-level vocabulary always keeps."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of {TOKENIZER_KINDS}")
    specials = [EOS, IM_START, IM_END]
    if kind == "bpe":
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    else:
        tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
        if kind == "word":
            tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()  # words and runs of punctuation
        else:  # as Whitespace (its pattern, inverted), but capitalised runs first; then only 2-word runs stay whole
            tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(NAME_RUNS), behavior="removed", invert=True),
                pre_tokenizers.Split(Regex(TWO_WORD_NAME), behavior="removed", invert=True),
            ])
        tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # join with spaces, tidy punctuation
        trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=specials + [UNK],
                                            show_progress=False)
    framing = [*PROMPT_TEMPLATES.values(), *FRAMING_TEXTS, *framing_texts]
    tokenizer.train_from_iterator(chain(texts, framing * (1 if kind == "bpe" else FRAMING_WEIGHT)), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=IM_END,
        pad_token=EOS,
        **({"unk_token": UNK} if kind != "bpe" else {}),
        additional_special_tokens=[IM_START],
        chat_template=CHAT_TEMPLATE,
    )
    fast.add_tokens(list(PROTOCOL_TAGS))
    return fast


def tiny_config(
    tokenizer,
    arch: str = "qwen2",
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    max_position_embeddings: int = 4096,
):
    """A small decoder config whose vocabulary covers every token id of ``tokenizer``."""
    from transformers import LlamaConfig, Qwen2Config

    configs = {"qwen2": Qwen2Config, "llama": LlamaConfig}
    if arch not in configs:
        raise ValueError(f"unknown arch {arch!r}; expected one of {sorted(configs)}")
    return configs[arch](
        vocab_size=len(tokenizer),  # largest token id + 1, added tokens included
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.convert_tokens_to_ids(IM_START),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_tiny_model(
    out_dir: str | Path,
    texts: Iterable[str] = (),
    *,
    arch: str = "qwen2",
    vocab_size: int = 2048,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    seed: int = 0,
    tokenizer_kind: str = "bpe",
    framing_texts: Iterable[str] = (),
) -> Path:
    """Train a tokenizer (``tokenizer_kind``, see `train_tokenizer`, as ``framing_texts``) on ``texts``, build a
    random model of that size, save both to ``out_dir``; return the path."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    out_dir = Path(out_dir)
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size, kind=tokenizer_kind, framing_texts=framing_texts)
    config = tiny_config(tokenizer, arch, hidden_size, num_layers, num_heads, num_kv_heads)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Explicit generation defaults: true sampling (HF's top_k=50 default silently truncates), stop at <|im_end|>.
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=True, top_k=0, top_p=1.0
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def load_tiny(path: str | Path):
    """Load a model and tokenizer saved by `build_tiny_model` (or any local causal LM directory)."""
    from transformers import AutoModelForCausalLM

    from igpo_envs.hf_tokenizer import load_tokenizer

    tokenizer = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    return model, tokenizer
