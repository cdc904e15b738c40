"""Question loaders: FlashRAG jsonl and Search-R1 / verl parquet (the paper's shipped splits are in `tasks.paper`).

Every loader returns ``list[QAItem]``. A malformed row raises ``ValueError`` naming the file, the row (1-based line
for jsonl, 0-based row for parquet) and the field, never a bare ``KeyError`` or a silently empty list.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from igpo_envs.types import QAItem

#: Separator of answer aliases in the verl / IGPO parquet ``reward_model.ground_truth`` string.
ANSWER_SPLIT = "<|answer_split|>"


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


def _as_id(value: Any, path: Path | str, where: str, field: str) -> str | None:
    """A question id from a string or an integer; None if absent (null). Anything else would be stringified into an
    id nobody can pin (``"None"``, ``"['a']"``), so it is an error."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _row_error(path, where, field, f"expected a string or an integer, got {type(value).__name__}")
    return str(value)


def _as_strings(value: Any, path: Path | str, where: str, field: str) -> tuple[str, ...]:
    """A list of strings (ids may be integers). A bare string is refused: ``tuple("Paris")`` is five titles."""
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise _row_error(path, where, field, f"expected a list of strings, got {type(value).__name__}")
    values = list(value)
    if not all(isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool)) for v in values):
        raise _row_error(path, where, field, f"expected strings, got {[type(v).__name__ for v in values]}")
    return tuple(str(v) for v in values)


def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of every non-blank line of a UTF-8 text file (``.gz`` read through gzip). A line that
    is not UTF-8, or a broken gzip stream, is a ``ValueError`` naming the file and the line."""
    lineno = 0
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError as exc:
                    raise ValueError(f"{path}: line {lineno}: not valid UTF-8 (byte {exc.start}: "
                                     f"{raw[exc.start:exc.start + 1]!r}); save the file as UTF-8") from None
                if line.strip():
                    yield lineno, line
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path}: line {lineno + 1}: cannot be read ({type(exc).__name__}: {exc})") from None


def load_flashrag_jsonl(path: str | Path, data_source: str = "") -> list[QAItem]:
    """FlashRAG jsonl: one ``{"id", "question", "golden_answers"}`` object per line (``.jsonl`` or ``.jsonl.gz``).

    Optional per-row fields: ``data_source``, ``gold_passage_ids``, ``gold_titles`` and ``metadata`` (a dict).
    """
    path = Path(path)
    items: list[QAItem] = []
    for lineno, line in read_lines(path):
        where = f"line {lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: {where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        except (RecursionError, ValueError) as exc:  # nesting too deep, an integer beyond Python's digit limit
            raise ValueError(f"{path}: {where}: not readable JSON ({type(exc).__name__}: {exc})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}: {where}: expected a JSON object, got {type(row).__name__}")
        for field in ("question", "golden_answers"):
            if field not in row:
                raise _row_error(path, where, field, "missing")
        metadata = row.get("metadata", {})
        if not isinstance(metadata, dict):
            raise _row_error(path, where, "metadata", f"expected an object, got {type(metadata).__name__}")
        source = data_source if row.get("data_source") is None else row["data_source"]
        if not isinstance(source, str):
            raise _row_error(path, where, "data_source", f"expected a string, got {type(source).__name__}")
        items.append(
            QAItem(
                id=_as_id(row.get("id"), path, where, "id") or f"{path.stem}-{lineno}",
                question=_as_question(row["question"], path, where, "question"),
                golden_answers=_as_answers(row["golden_answers"], path, where, "golden_answers"),
                data_source=source,
                gold_passage_ids=_as_strings(row.get("gold_passage_ids", ()), path, where, "gold_passage_ids"),
                gold_titles=_as_strings(row.get("gold_titles", ()), path, where, "gold_titles"),
                metadata=metadata,
            )
        )
    if not items:
        raise ValueError(f"{path}: no questions found (empty file)")
    return items


#: Tags that show a prompt is a whole task prompt (instructions + question), not a bare question.
_PROTOCOL_TAGS = ("<answer>", "<search>", "<tool_call>")
_QUESTION_MARKER = "Question:"


def _question_from_prompt(prompt: Any, path: Path | str, where: str) -> str:
    """The question of a chat ``prompt`` (verl layout): its last user message, which is either the bare question
    (IGPO's parquet) or a whole task prompt ending ``Question: <question>`` (Search-R1's), whose instructions igpo
    would otherwise wrap in its own."""
    if isinstance(prompt, str):
        content, field = prompt, "prompt"
    else:
        try:
            messages = list(prompt)
        except TypeError:
            raise _row_error(path, where, "prompt",
                             f"expected a list of chat messages, got {type(prompt).__name__}") from None
        users = [m for m in messages if isinstance(m, Mapping) and m.get("role") == "user"]
        if not users:
            raise _row_error(path, where, "prompt", "no message with role 'user'")
        content, field = users[-1].get("content"), "prompt[-1].content"
    content = _as_question(content, path, where, field)
    if not any(tag in content for tag in _PROTOCOL_TAGS):
        return content
    _, marker, question = content.rpartition(_QUESTION_MARKER)
    if not marker or not question.strip():
        raise _row_error(path, where, field, f"is a whole task prompt (it spells out the {'/'.join(_PROTOCOL_TAGS)} "
                         f"protocol) with no {_QUESTION_MARKER!r} to take the question from; add a 'question' column")
    return question.strip()


def _verl_id(row: Mapping, extra: Mapping, source: str, path: Path, index: int) -> str:
    """``id``; else ``extra_info.index``: a string as it is (IGPO's ``nq_...``), an integer (Search-R1's row number
    within its source) as ``<source>-<n>``, unique across the sources of a merged file; else ``<source>-<row>``."""
    where = f"row {index}"
    if (item_id := _as_id(row.get("id"), path, where, "id")) is not None:
        return item_id
    extra_index = extra.get("index")
    if extra_index is None:
        return f"{source or path.stem}-{index}"
    if isinstance(extra_index, str):
        return _as_id(extra_index, path, where, "extra_info.index")
    return f"{source or path.stem}-{_as_id(extra_index, path, where, 'extra_info.index')}"


def load_verl_parquet(path: str | Path, data_source: str | None = None) -> list[QAItem]:
    """Search-R1 / verl parquet (the IGPO paper's format). ``data_source`` keeps only rows of that source.

    Question: the ``question`` column, else the last user message of ``prompt`` (the text after its last
    ``Question:`` when that message is a whole Search-R1-style task prompt). Gold answers: the ``golden_answers``
    column, else ``reward_model.ground_truth`` (a list, ``{"target": [...]}``, or aliases joined by
    ``<|answer_split|>``). Id: see `_verl_id`.
    """
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise ValueError(f"{path}: not a readable parquet file ({exc})") from exc
    items: list[QAItem] = []
    sources: set[str] = set()
    for index, row in enumerate(rows):
        where = f"row {index}"
        source = row.get("data_source") or ""
        if not isinstance(source, str):
            raise _row_error(path, where, "data_source", f"expected a string, got {type(source).__name__}")
        sources.add(source)
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
        items.append(QAItem(id=_verl_id(row, extra, source, path, index), question=question, golden_answers=answers,
                            data_source=source,
                            metadata={"row": index}))
    if not items:
        detail = f" with data_source={data_source!r} (sources present: {sorted(sources)})" if data_source else ""
        raise ValueError(f"{path}: no questions found{detail}")
    return items


def load_questions(questions: str | Path | Sequence[QAItem], data_source: str | None = None) -> list[QAItem]:
    """Questions from a path (``.jsonl``/``.jsonl.gz`` FlashRAG, ``.parquet`` verl) or a sequence of `QAItem`.

    ``data_source`` keeps only the questions of that source (jsonl rows without a ``data_source`` field count as
    of it); no question left is an error.
    """
    if data_source is not None and not isinstance(data_source, str):
        raise TypeError(f"data_source must be a string, got {type(data_source).__name__}")
    if isinstance(questions, (str, Path)):
        path = Path(questions)
        if not path.exists():
            raise FileNotFoundError(f"questions file not found: {path}")
        name = path.name.lower()
        if name.endswith(".parquet"):
            return load_verl_parquet(path, data_source)
        if name.endswith((".jsonl", ".jsonl.gz", ".json")):
            items, origin = load_flashrag_jsonl(path, data_source or ""), str(path)
        else:
            raise ValueError(f"{path}: unknown questions format; expected .jsonl, .jsonl.gz or .parquet")
    else:
        if isinstance(questions, (bytes, Mapping)) or not isinstance(questions, Iterable):
            raise TypeError(f"questions must be a path or a sequence of QAItem, got {type(questions).__name__}")
        items, origin = list(questions), "questions"
        for i, item in enumerate(items):
            if not isinstance(item, QAItem):
                raise TypeError(f"questions[{i}] is a {type(item).__name__}, expected igpo_envs.types.QAItem")
        if not items:
            raise ValueError("questions is empty")
    if data_source is not None:
        sources = sorted({item.data_source for item in items})
        items = [item for item in items if item.data_source == data_source]
        if not items:
            raise ValueError(f"{origin}: no questions found with data_source={data_source!r} "
                             f"(sources present: {sources})")
    return items
