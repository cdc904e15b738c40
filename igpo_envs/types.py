"""Plain data records shared by tasks, retrievers, the env and the trainer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Passage:
    """One retrievable passage, in the wiki-18 sense: a title and ~100 words of text."""

    id: str
    title: str
    text: str
    score: float = 0.0

    @property
    def contents(self) -> str:
        """The wiki-18 / FlashRAG `contents` field: the quoted title on the first line, then the text."""
        return f'"{self.title}"\n{self.text}'


@dataclass(frozen=True)
class QAItem:
    """One question with its gold answers (aliases) and, where known, its gold evidence."""

    id: str
    question: str
    golden_answers: tuple[str, ...]
    data_source: str = ""
    gold_passage_ids: tuple[str, ...] = ()
    gold_titles: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
