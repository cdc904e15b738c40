"""Load a tokenizer the way it was saved.

transformers 5 rebuilds the tokenizer of some model types from their vocabulary with that family's own
pre-tokenizer (for Qwen2: `Qwen2Tokenizer`, byte-level BPE with Qwen's regex), whatever ``tokenizer.json`` says. For a
hub checkpoint that is a fix; for a locally trained tokenizer of another kind (the word-level vocabularies of
`igpo_trainer.tiny`) it silently maps most words to nothing. `load_tokenizer` keeps AutoTokenizer's choice unless the
saved ``tokenizer.json`` has a different model type, in which case it loads that file as saved.
"""

from __future__ import annotations

import json
from pathlib import Path


def load_tokenizer(path: str | Path, **kwargs):
    """``AutoTokenizer.from_pretrained(path)``, or the saved ``tokenizer.json`` as is when AutoTokenizer would
    rebuild it as another kind of tokenizer (see the module docstring)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), **kwargs)
    saved = Path(path) / "tokenizer.json"
    if not saved.is_file() or not hasattr(tokenizer, "backend_tokenizer"):
        return tokenizer
    saved_model = json.loads(saved.read_text(encoding="utf-8")).get("model", {}).get("type")
    built_model = json.loads(tokenizer.backend_tokenizer.to_str()).get("model", {}).get("type")
    if saved_model == built_model:
        return tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(path), **kwargs)
