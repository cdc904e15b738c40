"""Question loaders: FlashRAG jsonl and Search-R1 / verl parquet, plus the IGPO paper's shipped eval splits.

Every loader returns ``list[QAItem]``. A malformed row raises ``ValueError`` naming the file, the row (1-based line
for jsonl, 0-based row for parquet) and the field, never a bare ``KeyError`` or a silently empty list.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from igpo_envs.types import QAItem

#: Separator of answer aliases in the verl / IGPO parquet ``reward_model.ground_truth`` string.
ANSWER_SPLIT = "<|answer_split|>"

#: The paper's seven datasets: env id suffix -> ``data_source`` value in the shipped parquet files.
PAPER_DATASETS = {
    "NQ": "nq",
    "TriviaQA": "tq",
    "PopQA": "popqa",
    "HotpotQA": "hotpotqa",
    "2Wiki": "2wiki",
    "Musique": "musique",
    "Bamboogle": "Bamboogle",
}
PAPER_SPLITS = ("dev", "test")


def data_path(name: str) -> Path:
    """Path of a file shipped in ``igpo_envs/data``."""
    return Path(str(resources.files("igpo_envs") / "data" / name))


def _row_error(path: Path | str, where: str, field: str, problem: str) -> ValueError:
    return ValueError(f"{path}: {where}: field {field!r}: {problem}")


def _as_answers(value: Any, path: Path | str, where: str, field: str) -> tuple[str, ...]:
    """Gold aliases from a list, a numpy array, a ``{"target": [...]}`` dict or an ``<|answer_split|>`` string."""
    if isinstance(value, Mapping) and "target" in value:  # Search-R1's {"target": [...]} layout
        value = value["target"]
    if isinstance(value, str):
        answers = [a.strip() for a in value.split(ANSWER_SPLIT)]
    elif isinstance(value, Iterable) and not isinstance(value, (bytes, Mapping)):
        answers = list(value)
        if not all(isinstance(a, str) for a in answers):
            raise _row_error(path, where, field, f"expected strings, got {[type(a).__name__ for a in answers]}")
        answers = [a.strip() for a in answers]
    else:
        raise _row_error(path, where, field, f"expected a list of strings or a string, got {type(value).__name__}")
    answers = [a for a in answers if a]
    if not answers:
        raise _row_error(path, where, field, "no non-empty gold answer")
    return tuple(answers)


def _as_question(value: Any, path: Path | str, where: str, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _row_error(path, where, field, f"expected a non-empty string, got {value!r:.80}")
    return value.strip()


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def load_flashrag_jsonl(path: str | Path, data_source: str = "") -> list[QAItem]:
    """FlashRAG jsonl: one ``{"id", "question", "golden_answers"}`` object per line (``.jsonl`` or ``.jsonl.gz``).

    Optional per-row fields: ``data_source``, ``gold_passage_ids``, ``gold_titles`` and ``metadata`` (a dict).
    """
    path = Path(path)
    items: list[QAItem] = []
    with _open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"line {lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: {where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}: {where}: expected a JSON object, got {type(row).__name__}")
            for field in ("question", "golden_answers"):
                if field not in row:
                    raise _row_error(path, where, field, "missing")
            metadata = row.get("metadata", {})
            if not isinstance(metadata, dict):
                raise _row_error(path, where, "metadata", f"expected an object, got {type(metadata).__name__}")
            items.append(
                QAItem(
                    id=str(row.get("id", f"{path.stem}-{lineno}")),
                    question=_as_question(row["question"], path, where, "question"),
                    golden_answers=_as_answers(row["golden_answers"], path, where, "golden_answers"),
                    data_source=str(row.get("data_source", data_source)),
                    gold_passage_ids=tuple(str(x) for x in row.get("gold_passage_ids", ())),
                    gold_titles=tuple(str(x) for x in row.get("gold_titles", ())),
                    metadata=metadata,
                )
            )
    if not items:
        raise ValueError(f"{path}: no questions found (empty file)")
    return items


def _question_from_prompt(prompt: Any, path: Path | str, where: str) -> str:
    """The last user message of a chat ``prompt`` (verl layout)."""
    if isinstance(prompt, str):
        return _as_question(prompt, path, where, "prompt")
    try:
        messages = list(prompt)
    except TypeError:
        raise _row_error(path, where, "prompt", f"expected a list of chat messages, got {type(prompt).__name__}")
    users = [m for m in messages if isinstance(m, Mapping) and m.get("role") == "user"]
    if not users:
        raise _row_error(path, where, "prompt", "no message with role 'user'")
    return _as_question(users[-1].get("content"), path, where, "prompt[-1].content")


def load_verl_parquet(path: str | Path, data_source: str | None = None) -> list[QAItem]:
    """Search-R1 / verl parquet (the IGPO paper's format). ``data_source`` keeps only rows of that source.

    Question: the ``question`` column, else the last user message of ``prompt``. Gold answers: the
    ``golden_answers`` column, else ``reward_model.ground_truth`` (a list, ``{"target": [...]}``, or aliases joined
    by ``<|answer_split|>``). Id: ``id``, else ``extra_info.index``, else ``<source>-<row>``.
    """
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise ValueError(f"{path}: not a readable parquet file ({exc})") from exc
    items: list[QAItem] = []
    for index, row in enumerate(rows):
        where = f"row {index}"
        source = row.get("data_source") or ""
        if data_source is not None and source != data_source:
            continue
        if row.get("question") is not None:
            question = _as_question(row["question"], path, where, "question")
        elif "prompt" in row:
            question = _question_from_prompt(row["prompt"], path, where)
        else:
            raise _row_error(path, where, "question", "missing (and no 'prompt' column)")
        if row.get("golden_answers") is not None:
            answers = _as_answers(row["golden_answers"], path, where, "golden_answers")
        else:
            reward_model = row.get("reward_model")
            if not isinstance(reward_model, Mapping) or reward_model.get("ground_truth") is None:
                raise _row_error(path, where, "reward_model.ground_truth", "missing")
            answers = _as_answers(reward_model["ground_truth"], path, where, "reward_model.ground_truth")
        extra = row.get("extra_info") if isinstance(row.get("extra_info"), Mapping) else {}
        item_id = row.get("id") or extra.get("index") or f"{source or path.stem}-{index}"
        items.append(QAItem(id=str(item_id), question=question, golden_answers=answers, data_source=source,
                            metadata={"row": index}))
    if not items:
        detail = f" with data_source={data_source!r}" if data_source is not None else ""
        raise ValueError(f"{path}: no questions found{detail}")
    return items


def load_questions(questions: str | Path | Sequence[QAItem], data_source: str | None = None) -> list[QAItem]:
    """Questions from a path (``.jsonl``/``.jsonl.gz`` FlashRAG, ``.parquet`` verl) or a sequence of `QAItem`."""
    if isinstance(questions, (str, Path)):
        path = Path(questions)
        if not path.exists():
            raise FileNotFoundError(f"questions file not found: {path}")
        name = path.name.lower()
        if name.endswith(".parquet"):
            return load_verl_parquet(path, data_source)
        if name.endswith((".jsonl", ".jsonl.gz", ".json")):
            return load_flashrag_jsonl(path, data_source or "")
        raise ValueError(f"{path}: unknown questions format; expected .jsonl, .jsonl.gz or .parquet")
    items = list(questions)
    for i, item in enumerate(items):
        if not isinstance(item, QAItem):
            raise TypeError(f"questions[{i}] is a {type(item).__name__}, expected igpo_envs.types.QAItem")
    if not items:
        raise ValueError("questions is empty")
    return items


def load_paper_split(data_source: str, split: str = "test") -> list[QAItem]:
    """One of the paper's seven datasets from the shipped IGPO eval parquet (``split="test"`` or ``"dev"``)."""
    if split not in PAPER_SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {PAPER_SPLITS}")
    if data_source not in PAPER_DATASETS.values():
        raise ValueError(f"unknown data_source {data_source!r}; expected one of {sorted(PAPER_DATASETS.values())}")
    return load_verl_parquet(data_path(f"igpo_eval/{split}.parquet"), data_source=data_source)


def make_paper_env(data_source: str, split: str = "test", **kwargs: Any):
    """Entry point of ``igpo/NQ-v0`` ... ``igpo/Bamboogle-v0``: a `SearchQAEnv` over a shipped paper split.

    There is no corpus offline (the paper searched the web): pass ``corpus=``, ``retriever_url=`` or ``retriever=``.
    """
    from igpo_envs.env import SearchQAEnv

    questions = kwargs.pop("questions", None) or load_paper_split(data_source, split)
    return SearchQAEnv(questions=questions, **kwargs)
