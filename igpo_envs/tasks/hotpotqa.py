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

from igpo_envs.tasks.datasets import _open_text, data_path
from igpo_envs.types import Passage, QAItem

SHIPPED_FILE = "hotpotqa_distractor_dev400.jsonl.gz"


def _field(row: dict, field: str, path: Path, lineno: int) -> Any:
    if field not in row:
        raise ValueError(f"{path}: line {lineno}: field {field!r}: missing")
    return row[field]


def load_hotpotqa_distractor(path: str | Path | None = None) -> tuple[list[QAItem], list[Passage]]:
    """Questions and the pooled passage corpus from an IRCoT-processed HotpotQA jsonl (default: the shipped file)."""
    path = Path(path) if path is not None else data_path(SHIPPED_FILE)
    passages: list[Passage] = []
    ids_by_key: dict[tuple[str, str], str] = {}
    items: list[QAItem] = []
    with _open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: line {lineno}: not valid JSON ({exc.msg})") from None
            answers = [span for obj in _field(row, "answers_objects", path, lineno) for span in obj.get("spans", [])]
            if not answers:
                raise ValueError(f"{path}: line {lineno}: field 'answers_objects': no answer span")
            gold_ids, gold_titles = [], []
            for ctx in _field(row, "contexts", path, lineno):
                if "title" not in ctx or "paragraph_text" not in ctx:
                    raise ValueError(f"{path}: line {lineno}: field 'contexts': a context lacks title/paragraph_text")
                key = (ctx["title"], ctx["paragraph_text"])
                if key not in ids_by_key:
                    ids_by_key[key] = f"hp-{len(passages)}"
                    passages.append(Passage(ids_by_key[key], ctx["title"], ctx["paragraph_text"]))
                if ctx.get("is_supporting"):
                    gold_ids.append(ids_by_key[key])
                    gold_titles.append(ctx["title"])
            items.append(
                QAItem(
                    id=str(_field(row, "question_id", path, lineno)),
                    question=str(_field(row, "question_text", path, lineno)).strip(),
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
    from igpo_envs.env import SearchQAEnv

    items, _ = _shipped()
    kwargs.setdefault("questions", items)
    if not any(kwargs.get(k) is not None for k in ("retriever", "corpus", "retriever_url")):
        kwargs["retriever"] = default_retriever()
    return SearchQAEnv(**kwargs)
