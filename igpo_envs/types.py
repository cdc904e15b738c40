"""Plain data records shared by tasks, retrievers, the env and the trainer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_set_attribute = object.__setattr__


@dataclass(frozen=True, init=False)
class Passage:
    """One retrievable passage, in the wiki-18 sense: a title and ~100 words of text."""

    id: str
    title: str
    text: str
    score: float = 0.0

    def __init__(self, id: str, title: str, text: str, score: float = 0.0):
        # What the generated frozen __init__ does, in one attribute write instead of four: retrievers build a few
        # passages per search, and this is a third of their cost.
        _set_attribute(self, "__dict__", {"id": id, "title": title, "text": text, "score": score})

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
