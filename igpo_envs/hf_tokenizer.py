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


def stop_token_ids(tokenizer, stops) -> list[int] | None:
    """The token ids of ``stops`` when every one is an added (atomic) token of ``tokenizer``, else None.

    Such stops can end generation as extra EOS ids: exact, cheaper than HF's string matching, and independent of how
    the vocabulary spells its tokens (HF's ``StopStringCriteria`` cannot read a word-level one). A stop that is an
    ordinary vocabulary entry is not enough: the model may write it as several smaller tokens.
    """
    added = tokenizer.get_added_vocab()
    return [added[s] for s in stops] if stops and all(s in added for s in stops) else None
