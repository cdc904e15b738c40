"""``igpo/HotpotQA-Distractor-v0``: 400 real HotpotQA distractor-dev questions, fully offline.

Each question comes with its own ten Wikipedia paragraphs (two gold). The corpus is the pool of every question's
paragraphs deduplicated by title + text (3,902 passages), so an agent has to find the two gold paragraphs among
thousands with its own queries. Passage ids are ``hp-<n>`` in first-appearance order of the shipped file, hence stable.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from igpo_envs.env import SearchQAEnv
from igpo_envs.tasks.datasets import data_path, read_lines
from igpo_envs.types import Passage, QAItem

SHIPPED_FILE = "hotpotqa_distractor_dev400.jsonl.gz"


def _field(row: dict, field: str, path: Path, lineno: int, kind: type | tuple[type, ...] = object) -> Any:
    if field not in row:
        raise ValueError(f"{path}: line {lineno}: field {field!r}: missing")
    value = row[field]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"{path}: line {lineno}: field {field!r}: unexpected {type(value).__name__}")
    return value


def _records(values: list, field: str, keys: dict[str, type], path: Path, lineno: int) -> list[dict]:
    """``values`` if every entry is an object whose ``keys`` have the given types."""
    for value in values:
        if not isinstance(value, dict) or any(not isinstance(value.get(k), t) for k, t in keys.items()):
            expected = ", ".join(f"{k}: {t.__name__}" for k, t in keys.items())
            raise ValueError(f"{path}: line {lineno}: field {field!r}: expected objects with {{{expected}}}")
    return values


def load_hotpotqa_distractor(path: str | Path | None = None) -> tuple[list[QAItem], list[Passage]]:
    """Questions and the pooled passage corpus from an IRCoT-processed HotpotQA jsonl (default: the shipped file)."""
    path = Path(path) if path is not None else data_path(SHIPPED_FILE)
    passages: list[Passage] = []
    ids_by_key: dict[tuple[str, str], str] = {}
    items: list[QAItem] = []
    for lineno, line in read_lines(path):
        try:
            row = json.loads(line)
        except (RecursionError, ValueError) as exc:  # JSONDecodeError is a ValueError
            raise ValueError(f"{path}: line {lineno}: not valid JSON ({exc})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}: line {lineno}: expected a JSON object, got {type(row).__name__}")
        answer_objects = _records(_field(row, "answers_objects", path, lineno, list), "answers_objects",
                                  {"spans": list}, path, lineno)
        answers = [span for obj in answer_objects for span in obj["spans"]]
        if not answers or not all(isinstance(a, str) for a in answers):
            raise ValueError(f"{path}: line {lineno}: field 'answers_objects': expected string answer spans")
        gold_ids, gold_titles = [], []
        contexts = _records(_field(row, "contexts", path, lineno, list), "contexts",
                            {"title": str, "paragraph_text": str}, path, lineno)
        for ctx in contexts:
            key = (ctx["title"], ctx["paragraph_text"])
            if key not in ids_by_key:
                ids_by_key[key] = f"hp-{len(passages)}"
                passages.append(Passage(ids_by_key[key], ctx["title"], ctx["paragraph_text"]))
            if ctx.get("is_supporting"):
                gold_ids.append(ids_by_key[key])
                gold_titles.append(ctx["title"])
        items.append(
            QAItem(
                id=str(_field(row, "question_id", path, lineno, (str, int))),
                question=_field(row, "question_text", path, lineno, str).strip(),
                golden_answers=tuple(answers),
                data_source="hotpotqa_distractor",
                gold_passage_ids=tuple(gold_ids),
                gold_titles=tuple(gold_titles),
            )
        )
    return items, passages


@lru_cache(maxsize=1)
def _shipped() -> tuple[tuple[QAItem, ...], tuple[Passage, ...]]:
    items, passages = load_hotpotqa_distractor()
    return tuple(items), tuple(passages)


@lru_cache(maxsize=1)
def default_retriever():
    """The BM25 retriever over the shipped pool, built once per process (all sub-envs share it, batching searches)."""
    from igpo_envs.search.bm25 import BM25Retriever

    return BM25Retriever.from_passages(list(_shipped()[1]), cache_dir=None)


def make_hotpotqa_distractor_env(**kwargs: Any):
    """Entry point of ``igpo/HotpotQA-Distractor-v0``. Any `SearchQAEnv` argument may be overridden."""
    items, _ = _shipped()
    kwargs.setdefault("questions", items)
    if not any(kwargs.get(k) is not None for k in ("retriever", "corpus", "retriever_url")):
        kwargs["retriever"] = default_retriever()
    return SearchQAEnv(**kwargs)
