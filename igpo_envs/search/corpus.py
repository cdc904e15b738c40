"""Read passage corpora in the FlashRAG / Search-R1 wiki-18 jsonl format.

One JSON object per line, in either of two shapes::

    {"id": "0", "contents": "\\"Evan Morris\\"\\nEvan L. Morris (January 26, 1977 ..."}
    {"id": "0", "title": "Evan Morris", "text": "Evan L. Morris (January 26, 1977 ..."}

(the first is wiki-18's own: the quoted title on the first line of ``contents``, then the text).

Files ending in ``.gz`` are read through gzip. Blank lines are skipped; any other malformed line is a
``ValueError`` naming the file, the line number and the field.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from igpo_envs.types import Passage

__all__ = [
    "CorpusRows",
    "file_content_hash",
    "iter_passages",
    "load_passages",
    "passage_from_record",
    "passages_content_hash",
    "split_contents",
]

_HASH_CHUNK = 1 << 20


def split_contents(contents: str) -> tuple[str, str]:
    """Split a wiki-18 ``contents`` string into ``(title, text)``.

    The title is the first line with one pair of surrounding double quotes removed; the text is everything after the
    first newline. A ``contents`` without a newline has no title line: it is all text (title ``""``).
    """
    first, sep, text = contents.partition("\n")
    if not sep:
        return "", contents
    if len(first) >= 2 and first[0] == '"' and first[-1] == '"':
        first = first[1:-1]
    return first, text


def passage_from_record(record: Any, where: str = "record") -> Passage:
    """Build a :class:`Passage` from one decoded corpus object (either shape); ``where`` prefixes error messages."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "id" not in record:
        raise ValueError(f"{where}: missing field 'id'")
    pid = record["id"]
    if not isinstance(pid, (str, int)) or isinstance(pid, bool):
        raise ValueError(f"{where}: field 'id' must be a string or an integer, got {type(pid).__name__}")
    if "contents" in record:
        contents = record["contents"]
        if not isinstance(contents, str):
            raise ValueError(f"{where}: field 'contents' must be a string, got {type(contents).__name__}")
        title, text = split_contents(contents)
        return Passage(id=str(pid), title=title, text=text)
    if "text" not in record:
        raise ValueError(f"{where}: missing field 'contents' (or 'text', with an optional 'title')")
    text, title = record["text"], record.get("title", "")
    if not isinstance(text, str):
        raise ValueError(f"{where}: field 'text' must be a string, got {type(text).__name__}")
    if not isinstance(title, str):
        raise ValueError(f"{where}: field 'title' must be a string, got {type(title).__name__}")
    return Passage(id=str(pid), title=title, text=text)


def _open_binary(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def iter_passages(path: str | os.PathLike[str]) -> Iterator[Passage]:
    """Stream the passages of a wiki-18 jsonl corpus, in file order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"corpus file not found: {path}")
    with _open_binary(path) as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ValueError(f"{where}: invalid JSON ({exc})") from exc
            yield passage_from_record(record, where)


def load_passages(path: str | os.PathLike[str]) -> list[Passage]:
    """Read a whole wiki-18 jsonl corpus into a list of passages."""
    return list(iter_passages(path))


def file_content_hash(path: str | os.PathLike[str]) -> str:
    """sha256 (hex) over the file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def passages_content_hash(passages: Iterable[Passage]) -> str:
    """sha256 (hex) over the ids, titles and texts of in-memory passages, in order.

    Each field is length-prefixed, so no choice of separator characters inside the fields can make two different
    corpora hash alike. (This is not the hash of the jsonl file the passages might have come from.)
    """
    h = hashlib.sha256()
    for p in passages:
        h.update(f"{len(p.id)}:{p.id}{len(p.title)}:{p.title}{len(p.text)}:{p.text}".encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def _id_key(pid: Any) -> int:
    """A 64-bit key of a corpus id (``"7"`` and ``7`` are the same passage, as :class:`Passage` ids are strings)."""
    return int.from_bytes(hashlib.blake2b(str(pid).encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


class CorpusRows:
    """The rows of a wiki-18 jsonl corpus exactly as stored, looked up by passage id.

    A retrieval server answers with these (as Search-R1's does), not with ``contents`` rebuilt from a parsed title and
    text: a title line without quotes, an untitled passage or extra fields come back as they are in the file.

    One pass over the file records, per row, a 64-bit hash of its id and where the line starts; lookups binary-search
    the hashes and re-read the line (~20 bytes of memory per row; a ``.gz`` corpus, which cannot be read at an
    offset, is kept decompressed in memory). With duplicate ids the first row wins.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        import numpy as np

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"corpus file not found: {self.path}")
        self._data: bytes | None = None
        keys, starts, ends = [], [], []
        with _open_binary(self.path) as f:
            data = f.read() if self.path.suffix == ".gz" else None
            lines = iter(data.splitlines(keepends=True)) if data is not None else f
            offset = 0
            for lineno, raw in enumerate(lines, start=1):
                start, offset = offset, offset + len(raw)
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    raise ValueError(f"{self.path}:{lineno}: invalid JSON ({exc})") from exc
                passage_from_record(record, f"{self.path}:{lineno}")  # the same checks as indexing
                keys.append(_id_key(record["id"]))
                starts.append(start)
                ends.append(offset)
        self._data = data
        self._fd = os.open(self.path, os.O_RDONLY) if data is None else None  # pread: safe from many threads
        order = np.argsort(np.asarray(keys, dtype=np.uint64), kind="stable")  # stable: the first duplicate wins
        self._keys = np.asarray(keys, dtype=np.uint64)[order]
        self._starts = np.asarray(starts, dtype=np.int64)[order]
        self._ends = np.asarray(ends, dtype=np.int64)[order]
        repeated = int(np.count_nonzero(self._keys[1:] == self._keys[:-1]))
        if repeated:  # (or, once in ~10^19 pairs, two ids with one hash: get() compares the real ids)
            import warnings

            warnings.warn(f"{self.path}: {repeated} rows repeat an earlier row's id; a passage with a repeated id "
                          f"is served as the first row with that id", RuntimeWarning, stacklevel=2)

    def __len__(self) -> int:
        return len(self._keys)

    def _line(self, start: int, end: int) -> bytes:
        if self._data is not None:
            return self._data[start:end]
        return os.pread(self._fd, end - start, start)

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def get(self, pid: str) -> dict[str, Any] | None:
        """The stored row of passage ``pid`` (a fresh dict), or None if the corpus has no such id."""
        import numpy as np

        key = np.uint64(_id_key(pid))
        i = int(np.searchsorted(self._keys, key))
        while i < len(self._keys) and self._keys[i] == key:  # equal hashes: compare the real ids
            row = json.loads(self._line(int(self._starts[i]), int(self._ends[i])))
            if str(row["id"]) == str(pid):
                return row
            i += 1
        return None
