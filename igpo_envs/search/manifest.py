"""Index manifests: what an on-disk index was built from, so it is never served against another corpus.

Every index directory written by ``igpo-index build`` holds ``igpo_index.json``::

    {"format": 1, "engine": "tantivy", "corpus_sha256": "...", "corpus_path": "...", "num_docs": 1000,
     "parameters": {...}, "created": "2026-...Z", "igpo_version": "0.1.0"}

Opening an index for a corpus compares the corpus's sha256 with the manifest's and refuses a mismatch.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from igpo_envs.search.corpus import file_content_hash

MANIFEST_NAME = "igpo_index.json"
MANIFEST_FORMAT = 1
ENGINES = ("bm25s", "tantivy", "dense")


class IndexManifestError(ValueError):
    """An index directory has no readable manifest, or its manifest does not match what it is asked to serve."""


def igpo_version() -> str:
    try:
        from importlib.metadata import version

        return version("igpo")
    except Exception:  # not installed (running from a source tree)
        return "unknown"


@dataclass
class IndexManifest:
    """What one index directory contains and how it was built."""

    engine: str
    corpus_sha256: str
    num_docs: int
    parameters: dict[str, Any] = field(default_factory=dict)
    #: Dense indexes only: the encoder that embedded the passages (name, dim, pooling, prefixes, weights_sha256, ...).
    encoder: dict[str, Any] = field(default_factory=dict)
    #: Every file of the index directory at build time: ``{relative path: {"sha256": hex, "bytes": size}}``
    #: (filled by :func:`write_manifest`; :meth:`verify_files` compares the directory with it).
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    corpus_path: str = ""
    created: str = ""
    igpo_version: str = ""
    format: int = MANIFEST_FORMAT

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise IndexManifestError(f"unknown index engine {self.engine!r}; expected one of {ENGINES}")
        if not self.created:
            self.created = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        if not self.igpo_version:
            self.igpo_version = igpo_version()

    def check_corpus(self, corpus_sha256: str, *, index_dir: str | Path = "", corpus_path: str | Path = "") -> None:
        """Raise :class:`IndexManifestError` naming both hashes unless the index was built from this corpus."""
        if corpus_sha256 != self.corpus_sha256:
            raise IndexManifestError(
                f"index {str(index_dir) or '(unnamed)'} was built from corpus sha256 {self.corpus_sha256} "
                f"({self.corpus_path or 'unknown path'}), but it is asked to serve corpus sha256 {corpus_sha256} "
                f"({corpus_path or 'unknown path'}); rebuild it with "
                f"`igpo-index build --corpus {corpus_path or 'PATH'} --engine {self.engine} --out DIR`"
            )

    def check_encoder(self, encoder: dict[str, Any], *, index_dir: str | Path = "") -> None:
        """Raise :class:`IndexManifestError` naming every field in which ``encoder`` differs from the recorded one
        (dense indexes: queries embedded by another encoder, pooling or prefix land in another vector space)."""
        diff = {k: (self.encoder.get(k), v) for k, v in encoder.items() if k != "name" and self.encoder.get(k) != v}
        if diff:
            shown = "; ".join(f"{k}: index {old!r}, asked {new!r}" for k, (old, new) in sorted(diff.items()))
            raise IndexManifestError(
                f"index {str(index_dir) or '(unnamed)'} was embedded by encoder {self.encoder.get('name')!r}, which "
                f"differs from encoder {encoder.get('name')!r} in {shown}; query with the index's encoder or rebuild "
                f"it with `igpo-index build --engine dense --model ...`"
            )


    def verify_files(self, index_dir: str | Path, *, full: bool = True) -> None:
        """Raise :class:`IndexManifestError` naming the first file of ``index_dir`` that is missing, has another
        size or (with ``full``) other content than at build time. A manifest without checksums cannot be verified."""
        if not self.files:
            raise IndexManifestError(f"{index_dir}: the manifest records no file checksums (built by an older igpo)")
        for name, recorded in sorted(self.files.items()):
            path = Path(index_dir) / name
            if not path.is_file():
                raise IndexManifestError(f"{path}: missing (the index is damaged)")
            size = path.stat().st_size
            if size != recorded.get("bytes"):
                raise IndexManifestError(f"{path}: {size} bytes, {recorded.get('bytes')} at build time (truncated or "
                                         f"rewritten)")
            if full and file_content_hash(path) != recorded.get("sha256"):
                raise IndexManifestError(f"{path}: content differs from its checksum at build time (edited or "
                                         f"corrupted)")


#: `index_is_intact` hashes every file of caches up to this size; beyond it (a dense wiki-18 index is ~65 GB, minutes
#: to hash at every start) it checks presence and sizes only.
FULL_CHECK_MAX_BYTES = 4 << 30


def index_is_intact(index_dir: str | Path) -> bool:
    """True if ``index_dir`` holds an index whose files all match their build-time checksums.

    For self-healing caches: an absent directory is False; a damaged one (unreadable manifest, a missing, truncated,
    edited or garbled file, no checksums) gets a `RuntimeWarning` naming it and why, and is removed so the caller
    rebuilds it. Indexes above `FULL_CHECK_MAX_BYTES` are checked by file presence and size only.
    """
    import shutil
    import warnings

    index_dir = Path(index_dir)
    if not index_dir.exists():
        return False
    try:
        manifest = read_manifest(index_dir)
        total = sum(f.get("bytes") for f in manifest.files.values() if isinstance(f.get("bytes"), int))
        manifest.verify_files(index_dir, full=total <= FULL_CHECK_MAX_BYTES)
        return True
    except IndexManifestError as exc:
        warnings.warn(f"index cache {index_dir} is unusable ({exc}); rebuilding it", RuntimeWarning, stacklevel=2)
        shutil.rmtree(index_dir, ignore_errors=True)
        return False


def _index_files(index_dir: Path) -> list[Path]:
    """The files an index consists of: all but the manifest and tantivy's lock files (created by readers)."""
    return sorted(p for p in index_dir.rglob("*") if p.is_file() and p.name != MANIFEST_NAME
                  and not (p.name.startswith(".tantivy-") and p.name.endswith(".lock")))


def write_manifest(index_dir: str | Path, manifest: IndexManifest) -> Path:
    """Write the manifest last, with the checksum of every file already in ``index_dir``."""
    if not manifest.files:
        manifest.files = {p.relative_to(index_dir).as_posix(): {"sha256": file_content_hash(p),
                                                                "bytes": p.stat().st_size}
                          for p in _index_files(Path(index_dir))}
    path = Path(index_dir) / MANIFEST_NAME
    path.write_text(json.dumps(asdict(manifest), indent=2, sort_keys=True) + "\n")
    return path


def read_manifest(index_dir: str | Path) -> IndexManifest:
    """Load ``index_dir/igpo_index.json``; a missing or malformed manifest is an :class:`IndexManifestError`."""
    path = Path(index_dir) / MANIFEST_NAME
    if not path.is_file():
        raise IndexManifestError(
            f"{path} not found: {index_dir} is not an index built by `igpo-index build` (or the build did not finish)"
        )
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except json.JSONDecodeError as exc:
        raise IndexManifestError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc
    except (UnicodeDecodeError, RecursionError, ValueError) as exc:
        raise IndexManifestError(f"{path}: not a readable manifest ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, dict):
        raise IndexManifestError(f"{path}: expected a JSON object, got {type(data).__name__}")
    if data.get("format") != MANIFEST_FORMAT:
        raise IndexManifestError(f"{path}: manifest format {data.get('format')!r}, this igpo reads {MANIFEST_FORMAT}")
    missing = [k for k in ("engine", "corpus_sha256", "num_docs") if k not in data]
    if missing:
        raise IndexManifestError(f"{path}: missing field(s) {', '.join(missing)}")
    for name, kind in (("corpus_sha256", str), ("num_docs", int), ("parameters", dict), ("encoder", dict),
                       ("files", dict), ("corpus_path", str)):
        if name in data and (not isinstance(data[name], kind) or isinstance(data[name], bool)):
            raise IndexManifestError(f"{path}: field {name!r} must be a {kind.__name__}, got {data[name]!r:.80}")
    if any(not isinstance(v, dict) for v in data.get("files", {}).values()):
        raise IndexManifestError(f"{path}: field 'files' must map file names to {{'sha256', 'bytes'}}")
    known = {k: data[k] for k in IndexManifest.__dataclass_fields__ if k in data}
    return IndexManifest(**known)
