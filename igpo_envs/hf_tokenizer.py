"""Load a tokenizer the way it was saved.

transformers 5 rebuilds the tokenizer of some model types from their vocabulary with that family's own
pre-tokenizer (for Qwen2: `Qwen2Tokenizer`, byte-level BPE with Qwen's regex), whatever ``tokenizer.json`` says. For a
hub checkpoint that is a fix; for a locally trained tokenizer of another kind (the word-level vocabularies of
`igpo_trainer.tiny`) it silently maps most words to nothing. `load_tokenizer` keeps AutoTokenizer's choice unless the
saved ``tokenizer.json`` has a different model type, in which case it loads that file as saved.
"""

from __future__ import annotations

import json
from functools import lru_cache
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


def stopping_kwargs(tokenizer, stops, eos_token_ids) -> dict:
    """Keyword arguments for transformers' ``generate`` that end a turn right after the first of ``stops``.

    Atomic stops (`stop_token_ids`) become extra EOS ids. Otherwise HF's ``StopStringCriteria`` stops at the token
    that completes a stop string: real BPE vocabularies spell ``</answer>`` as several tokens (``'</'``, ``'answer'``,
    ``'>'``) and may end it inside a longer token (``'>Ċ'``), which it also catches. The criterion is built once per
    tokenizer and stops (over a 151k vocabulary that takes seconds; ``generate(stop_strings=...)`` rebuilds it on
    every call).
    """
    ids = stop_token_ids(tokenizer, stops)
    eos = [] if eos_token_ids is None else [eos_token_ids] if isinstance(eos_token_ids, int) else list(eos_token_ids)
    if ids is not None:
        return {"eos_token_id": [*eos, *(i for i in ids if i not in eos)]}
    from transformers import StoppingCriteriaList

    criteria = StoppingCriteriaList([_stop_string_criterion(tokenizer, tuple(stops))])
    return {"stopping_criteria": criteria, **({"eos_token_id": eos} if eos else {})}


@lru_cache(maxsize=16)
def _stop_string_criterion(tokenizer, stops: tuple[str, ...]):
    from transformers import StopStringCriteria

    return StopStringCriteria(tokenizer, list(stops))


def generated_turn(tokenizer, ids, stops, eos_token_ids, pad_token_id) -> list[int]:
    """The tokens of one turn from a row of ``generate``'s output (after the prompt): up to and including the first
    EOS, else without the padding that follows a row that stopped early (at a stop string or stop id).

    When pad == EOS, an "EOS" after a completed stop string is that padding, not a token the policy chose (the stop
    string may end inside the turn's last token, e.g. ``'>Ċ'``, so it is looked for anywhere in the turn).
    """
    ids, eos = list(ids), set(eos_token_ids)
    for pos, token in enumerate(ids):
        if token in eos:
            if pad_token_id in eos and any(s in tokenizer.decode(ids[:pos]) for s in stops):
                return ids[:pos]
            return ids[: pos + 1]
    while ids and ids[-1] == pad_token_id:
        ids.pop()
    return ids
