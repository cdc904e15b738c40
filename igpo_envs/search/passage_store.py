"""Passages by row number, in a memory-mapped Arrow file: the text side of a vector index.

A FAISS index only returns row numbers; :class:`PassageStore` turns them back into passages without holding the
corpus in memory (the file is mapped, so processes on one node share its pages). :class:`PassageWriter` streams
passages in, batch by batch, in the order their vectors are added to the index.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa

from igpo_envs.types import Passage

PASSAGES_FILE = "passages.arrow"
_COLUMNS = ("id", "title", "text")
# large_string: a wiki-18 scale text column exceeds the 2 GiB limit of 32-bit string offsets.
_SCHEMA = pa.schema([(name, pa.large_string()) for name in _COLUMNS])


class PassageWriter:
    """Append passages to a new Arrow file (``with PassageWriter(path) as w: w.write(batch)``)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.count = 0
        self._sink = pa.OSFile(str(self.path), "wb")
        self._writer = pa.ipc.new_file(self._sink, _SCHEMA)

    def write(self, passages: Iterable[Passage]) -> None:
        passages = list(passages)
        if passages:
            columns = [pa.array([getattr(p, name) for p in passages], pa.large_string()) for name in _COLUMNS]
            self._writer.write_batch(pa.record_batch(columns, schema=_SCHEMA))
            self.count += len(passages)

    def close(self) -> None:
        self._writer.close()
        self._sink.close()

    def __enter__(self) -> PassageWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PassageStore:
    """Read-only passages of an Arrow file written by :class:`PassageWriter`, looked up by row."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"passage file not found: {self.path}")
        table = pa.ipc.open_file(pa.memory_map(str(self.path), "r")).read_all()  # zero-copy view of the map
        if table.schema.names != list(_COLUMNS):
            raise ValueError(f"{self.path}: expected columns {list(_COLUMNS)}, found {table.schema.names}")
        self._columns = [table.column(name).chunks for name in _COLUMNS]
        self._chunk_starts = np.cumsum([0] + [len(c) for c in self._columns[0][:-1]])
        self.num_rows: int = table.num_rows

    def __len__(self) -> int:
        return self.num_rows

    def take(self, rows: np.ndarray, scores: Iterable[float] | None = None) -> list[Passage]:
        """Passages of ``rows`` (with ``scores``, if given), in that order.

        Looks rows up chunk by chunk: ``ChunkedArray.take`` over a streamed, many-chunk table costs tens of ms per
        call at 1M rows, more than a search."""
        rows = np.asarray(rows, dtype=np.int64)
        chunk_of_row = np.searchsorted(self._chunk_starts, rows, side="right") - 1
        values: list[list] = [[None] * len(rows) for _ in _COLUMNS]
        for chunk in np.unique(chunk_of_row).tolist():
            positions = np.flatnonzero(chunk_of_row == chunk)
            local = pa.array(rows[positions] - self._chunk_starts[chunk])
            for out, column in zip(values, self._columns):
                for position, value in zip(positions.tolist(), column[chunk].take(local).to_pylist()):
                    out[position] = value
        scores = [0.0] * len(rows) if scores is None else list(scores)
        return [Passage(i, t, x, float(s)) for i, t, x, s in zip(*values, scores)]
