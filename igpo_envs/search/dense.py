"""Dense retrieval: passages embedded by a sentence-transformers encoder, searched by inner product with FAISS.

The retriever most search-agent papers train with (Search-R1, ZeroSearch, R1-Searcher) is e5-base-v2 over wiki-18
in a FAISS ``Flat`` index. This module builds such indexes and opens them, including Search-R1's own
``e5_Flat.index`` (:func:`import_faiss_index`), behind the batched :class:`~igpo_envs.search.base.Retriever`
interface.

* **Encoder** (:class:`DenseEncoder`): any sentence-transformers model folder or hub id; a plain transformers
  folder gets mean pooling. Embeddings are L2-normalised, so inner product is cosine similarity. Query and passage
  prefixes are configurable; by default e5 models (``intfloat/e5-*``) get e5's ``"query: "`` / ``"passage: "``
  (as Search-R1 does), other models their own configured prompts, else none. Passages are embedded as their
  wiki-18 ``contents`` (the quoted title line, then the text), as Search-R1 and FlashRAG embed them.
* **Index directory** (``igpo-index build --engine dense``): ``igpo_index.json`` (corpus sha256, the encoder's
  name, dimension, pooling, prefixes and weights sha256, the index type), ``passages.arrow`` (row i = vector i)
  and ``faiss/shard-*.index``. Opening an index with another encoder, pooling or prefix, or for another corpus, is
  refused with :class:`~igpo_envs.search.manifest.IndexManifestError` naming what differs.
* **Bounded memory**: the corpus is streamed in chunks; each chunk's text goes to the Arrow file and its vectors
  into the current FAISS shard, which is written to disk when it holds ``shard_size`` vectors, so building holds at
  most one shard (3 GB for 1M 768-d vectors) plus one chunk. Flat shards are memory-mapped when opened
  (``faiss.IO_FLAG_MMAP_IFC``): the vectors live once in the page cache, shared by every searcher on the node.
  HNSW graphs load into memory (their vectors are mapped too). Several shards are searched one after the other
  as one ``faiss.IndexShards``.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from igpo_envs.search.manifest import IndexManifest, IndexManifestError, read_manifest, write_manifest
from igpo_envs.search.passage_store import PASSAGES_FILE, PassageStore, PassageWriter
from igpo_envs.types import Passage

__all__ = ["DenseEncoder", "DenseRetriever", "EncoderConfig", "add_dense_arguments", "build_dense_index",
           "dense_options", "import_faiss_index", "load_encoder"]

E5_QUERY_PREFIX = "query: "
E5_PASSAGE_PREFIX = "passage: "
INDEX_TYPES = ("flat", "hnsw")
FAISS_SUBDIR = "faiss"
#: What must agree between the encoder that built an index and the one that queries it.
ENCODER_IDENTITY = ("dim", "pooling", "modules", "query_prefix", "passage_prefix", "normalize", "weights_sha256",
                    "passage_text")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx")
_E5_NAME = re.compile(r"(^|[^a-z0-9])e5([^a-z0-9]|$)")

logger = logging.getLogger(__name__)


def _faiss():
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError('the dense engine needs FAISS: pip install "igpo[dense]" (faiss-cpu)') from exc
    return faiss


def _sentence_transformers():
    try:
        import sentence_transformers
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError('the dense engine needs sentence-transformers: pip install "igpo[dense]"') from exc
    return sentence_transformers


@dataclass
class EncoderConfig:
    """How queries and passages are embedded (recorded in a dense index's manifest)."""

    model: str = field(metadata={"help": "sentence-transformers (or plain transformers) model folder, or hub id"})
    pooling: str | None = field(default=None, metadata={
        "help": "token pooling: 'mean', 'cls', 'max', 'lasttoken', ... (sentence-transformers' modes); None keeps "
                "the model's own (mean for a plain transformers folder). e5 uses 'mean'"})
    query_prefix: str | None = field(default=None, metadata={
        "help": "text put before every query; None: 'query: ' for e5 models, else the model's 'query' prompt"})
    passage_prefix: str | None = field(default=None, metadata={
        "help": "text put before every passage; None: 'passage: ' for e5 models, else the model's 'document' prompt"})
    normalize: bool = field(default=True, metadata={"help": "L2-normalise embeddings (inner product = cosine)"})
    max_length: int | None = field(default=None, metadata={"help": "token limit per text (None: the model's)"})
    batch_size: int = field(default=64, metadata={"help": "texts per forward pass"})
    device: str | None = field(default=None, metadata={"help": "torch device (None: sentence-transformers' choice)"})


def _pooling_mode(module) -> str:
    """A sentence-transformers Pooling module's mode ('mean', 'cls', ...), across sentence-transformers versions."""
    mode = getattr(module, "pooling_mode", None)
    if mode is None:  # sentence-transformers < 6
        mode = module.get_pooling_mode_str()
    return mode if isinstance(mode, str) else "+".join(mode)


def _is_e5(name: str) -> bool:
    return bool(_E5_NAME.search(name.lower()))


@functools.lru_cache(maxsize=32)
def _weights_sha256_cached(folder: str, stamp: tuple) -> str:
    digest = hashlib.sha256()
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file() and path.suffix in _WEIGHT_SUFFIXES:
            file_hash = hashlib.sha256()
            with open(path, "rb") as f:
                while block := f.read(1 << 20):
                    file_hash.update(block)
            digest.update(f"{path.relative_to(folder).as_posix()}:{file_hash.hexdigest()}\n".encode())
    return digest.hexdigest()


def weights_sha256(folder: str | os.PathLike[str]) -> str:
    """sha256 over a model folder's weight files (names and contents); cached per process by size and mtime."""
    folder = Path(folder).resolve()
    stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
                  if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    if not stamp:
        raise ValueError(f"no weight files ({', '.join(_WEIGHT_SUFFIXES)}) under encoder folder {folder}")
    return _weights_sha256_cached(str(folder), stamp)


def _model_folder(name: str) -> Path:
    local = Path(name).expanduser()
    if local.is_dir():
        return local.resolve()
    from huggingface_hub import snapshot_download  # a hub id sentence-transformers has just loaded: in the cache

    return Path(snapshot_download(name, local_files_only=True))


class DenseEncoder:
    """Embeds queries and passages with a sentence-transformers model (see :class:`EncoderConfig`).

    Pickles by its config (the model is reloaded on the other side).
    """

    def __init__(self, config: EncoderConfig | str, **overrides: Any) -> None:
        if isinstance(config, str):
            config = EncoderConfig(model=config, **overrides)
        elif overrides:
            config = EncoderConfig(**{**asdict(config), **overrides})
        self.config = config
        st = _sentence_transformers()
        local = Path(config.model).expanduser()
        self.name = str(local.resolve()) if local.is_dir() else config.model
        model = st.SentenceTransformer(self.name, device=config.device)
        pooling_index = next((i for i, m in enumerate(model) if type(m).__name__ == "Pooling"), None)
        if config.pooling is not None:
            if pooling_index is None:
                raise ValueError(f"encoder {self.name} has no pooling module to set pooling={config.pooling!r}")
            current = model[pooling_index]
            if _pooling_mode(current) != config.pooling:
                try:
                    from sentence_transformers.sentence_transformer.modules import Pooling
                except ImportError:  # sentence-transformers < 6
                    from sentence_transformers.models import Pooling

                dim = getattr(current, "embedding_dimension", None) or current.word_embedding_dimension
                modules = list(model)
                modules[pooling_index] = Pooling(dim, pooling_mode=config.pooling,
                                                 include_prompt=getattr(current, "include_prompt", True))
                model = st.SentenceTransformer(modules=modules, device=config.device)
        if config.max_length is not None:
            model.max_seq_length = config.max_length
        self.model = model
        self.pooling = _pooling_mode(model[pooling_index]) if pooling_index is not None else "none"
        prompts = getattr(model, "prompts", None) or {}
        e5 = _is_e5(self.name)
        self.query_prefix = config.query_prefix if config.query_prefix is not None else (
            E5_QUERY_PREFIX if e5 else prompts.get("query", ""))
        self.passage_prefix = config.passage_prefix if config.passage_prefix is not None else (
            E5_PASSAGE_PREFIX if e5 else prompts.get("document", prompts.get("passage", "")))
        self.dim = int(self.encode(["dimension probe"], "").shape[1])
        self.weights_sha256 = weights_sha256(_model_folder(self.name))

    def describe(self) -> dict[str, Any]:
        """The manifest's ``encoder`` record."""
        return {
            "name": self.name,
            "dim": self.dim,
            "pooling": self.pooling,
            "modules": [type(m).__name__ for m in self.model],
            "query_prefix": self.query_prefix,
            "passage_prefix": self.passage_prefix,
            "normalize": self.config.normalize,
            "max_length": self.model.max_seq_length,
            "weights_sha256": self.weights_sha256,
            "passage_text": "contents",
        }

    def identity(self) -> dict[str, Any]:
        """The fields of :meth:`describe` that must match an index's manifest to query it."""
        described = self.describe()
        return {k: described[k] for k in ("name", *ENCODER_IDENTITY)}

    def encode(self, texts: Sequence[str], prefix: str) -> np.ndarray:
        """Embeddings of ``prefix + text`` for each text: float32, C-contiguous, shape ``(len(texts), dim)``."""
        if not len(texts):
            return np.zeros((0, getattr(self, "dim", 0)), dtype=np.float32)
        # prompt="" (not None) also keeps a model's default prompt, if it names one, out of the text.
        vectors = self.model.encode(list(texts), prompt=prefix, batch_size=self.config.batch_size,
                                    normalize_embeddings=self.config.normalize, convert_to_numpy=True,
                                    show_progress_bar=False)
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        return self.encode(queries, self.query_prefix)

    def encode_passages(self, passages: Sequence[Passage]) -> np.ndarray:
        return self.encode([p.contents for p in passages], self.passage_prefix)

    def __getstate__(self) -> dict:
        return {"config": EncoderConfig(**{**asdict(self.config), "model": self.name})}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["config"])

    def __repr__(self) -> str:
        return f"DenseEncoder({self.name!r}, dim={self.dim}, pooling={self.pooling!r})"


_ENCODER_KEYS = tuple(EncoderConfig.__dataclass_fields__)


def load_encoder(options: dict[str, Any]) -> tuple[DenseEncoder, dict[str, Any]]:
    """Split ``options`` into an encoder (``encoder=`` as given, or one loaded from ``model=`` and the other
    :class:`EncoderConfig` fields) and the remaining options."""
    rest = {k: v for k, v in options.items() if k not in _ENCODER_KEYS and k != "encoder"}
    config = {k: v for k, v in options.items() if k in _ENCODER_KEYS}
    encoder = options.get("encoder")
    if encoder is not None:
        if config:
            raise ValueError(f"give either encoder= or encoder options {sorted(config)}, not both")
        return encoder, rest
    if not config.get("model"):
        raise ValueError("the dense engine needs model= (a sentence-transformers folder or hub id, e.g. "
                         "'intfloat/e5-base-v2') or encoder= (a loaded DenseEncoder)")
    return DenseEncoder(EncoderConfig(**config)), rest


def add_dense_arguments(parser, *, build: bool, faiss_file: bool = False) -> None:
    """The dense engine's command-line options (``igpo-index build/import-faiss``, ``igpo-retriever``); read them
    back with :func:`dense_options`. Unset options default to the index manifest's (or the encoder's own).
    ``faiss_file`` adds ``--faiss-index`` (serve a FAISS file of ``--corpus``, e.g. Search-R1's, directly)."""
    group = parser.add_argument_group("dense engine (pip install 'igpo[dense]')")
    group.add_argument("--model", default=None,
                       help="encoder: sentence-transformers folder or hub id (e.g. intfloat/e5-base-v2)"
                            + ("" if build else "; default: the one the index was built with"))
    group.add_argument("--pooling", default=None, help="mean|cls|max|lasttoken (default: the model's; e5: mean)")
    group.add_argument("--query-prefix", default=None, help="text before each query (default: 'query: ' for e5)")
    group.add_argument("--passage-prefix", default=None, help="text before each passage (default: 'passage: ' for e5)")
    group.add_argument("--max-length", type=int, default=None, help="token limit per text (default: the model's)")
    group.add_argument("--batch-size", type=int, default=None, help="texts per encoder forward pass (default 64)")
    group.add_argument("--device", default=None, help="torch device for the encoder (default: auto)")
    group.add_argument("--ef-search", type=int, default=None, help="HNSW search depth (default 64)")
    if faiss_file:
        group.add_argument("--faiss-index", default=None,
                           help="a FAISS index file of --corpus (e.g. Search-R1's e5_Flat.index), used as is")
    if build:
        group.add_argument("--index-type", choices=INDEX_TYPES, default=None,
                           help="flat: exact inner product (default); hnsw: approximate, faster, more memory")
        group.add_argument("--shard-size", type=int, default=None,
                           help="vectors per FAISS shard file (bounds build memory; default 1,000,000)")
        group.add_argument("--hnsw-m", type=int, default=None, help="HNSW neighbours per node (default 32)")
        group.add_argument("--ef-construction", type=int, default=None, help="HNSW build depth (default 64)")


def dense_options(args) -> dict[str, Any]:
    """The dense options set on the command line (see :func:`add_dense_arguments`), as keyword arguments."""
    names = ("model", "pooling", "query_prefix", "passage_prefix", "max_length", "batch_size", "device", "ef_search",
             "index_type", "shard_size", "hnsw_m", "ef_construction", "faiss_index")
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


# -- building --------------------------------------------------------------------------------------------------------


def _new_faiss_index(index_type: str, dim: int, hnsw_m: int, ef_construction: int):
    faiss = _faiss()
    if index_type == "flat":
        return faiss.IndexFlatIP(dim)
    if index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        return index
    raise ValueError(f"unknown index type {index_type!r}; choose one of {', '.join(INDEX_TYPES)}")


def _chunks(items: Iterable[Passage], size: int) -> Iterator[list[Passage]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def build_dense_index(
    passages: Iterable[Passage],
    out_dir: str | os.PathLike[str],
    *,
    encoder: DenseEncoder,
    content_hash: str,
    source: str = "",
    index_type: str = "flat",
    shard_size: int = 1_000_000,
    chunk_rows: int = 4096,
    hnsw_m: int = 32,
    ef_construction: int = 64,
    ef_search: int = 64,
) -> IndexManifest:
    """Embed ``passages`` with ``encoder`` into a FAISS index directory (the layout :class:`DenseRetriever` opens).

    Passages are read ``chunk_rows`` at a time: each chunk's text is appended to ``passages.arrow`` and its vectors
    to the current shard, which is written to ``faiss/`` once it holds ``shard_size`` vectors. The manifest is
    written last, so a directory without one is an unfinished build.
    """
    faiss = _faiss()
    if index_type not in INDEX_TYPES:
        raise ValueError(f"unknown index type {index_type!r}; choose one of {', '.join(INDEX_TYPES)}")
    if shard_size < 1 or chunk_rows < 1:
        raise ValueError(f"shard_size and chunk_rows must be >= 1, got {shard_size} and {chunk_rows}")
    out = Path(out_dir)
    (out / FAISS_SUBDIR).mkdir(parents=True, exist_ok=True)
    shards: list[str] = []
    current = _new_faiss_index(index_type, encoder.dim, hnsw_m, ef_construction)

    def flush() -> None:
        nonlocal current
        name = f"{FAISS_SUBDIR}/shard-{len(shards):05d}.index"
        faiss.write_index(current, str(out / name))
        shards.append(name)
        current = _new_faiss_index(index_type, encoder.dim, hnsw_m, ef_construction)

    with PassageWriter(out / PASSAGES_FILE) as writer:
        for chunk in _chunks(passages, chunk_rows):
            writer.write(chunk)
            vectors = encoder.encode_passages(chunk)
            while len(vectors):
                room = shard_size - current.ntotal
                current.add(vectors[:room])
                vectors = vectors[room:]
                if current.ntotal == shard_size:
                    flush()
        count = writer.count
    if current.ntotal:
        flush()
    if not count:
        raise ValueError(f"cannot build a dense index over an empty corpus ({source or 'no passages'})")
    manifest = IndexManifest(
        engine="dense", corpus_sha256=content_hash, num_docs=count, corpus_path=str(source),
        encoder=encoder.describe(),
        parameters={"index_type": index_type, "metric": "inner_product", "shards": shards, "shard_size": shard_size,
                    "hnsw_m": hnsw_m, "ef_construction": ef_construction, "ef_search": ef_search,
                    "faiss": faiss.__version__},
    )
    write_manifest(out, manifest)
    return manifest


def _read_faiss(path: Path, mmap: bool):
    faiss = _faiss()
    if not path.is_file():
        raise FileNotFoundError(f"FAISS index file not found: {path}")
    if mmap:
        try:  # maps the vectors of Flat indexes (and of HNSW's Flat storage) instead of reading them
            return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
        except RuntimeError:  # an index type FAISS cannot map: read it
            pass
    return faiss.read_index(str(path))


def _index_type_name(index) -> str:
    faiss = _faiss()
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexFlat):
        return "flat"
    if isinstance(index, faiss.IndexHNSW):
        return "hnsw"
    return type(index).__name__


def import_faiss_index(
    faiss_file: str | os.PathLike[str],
    passages: Iterable[Passage],
    out_dir: str | os.PathLike[str],
    *,
    encoder: DenseEncoder,
    content_hash: str,
    source: str = "",
) -> IndexManifest:
    """Make an index directory around an existing FAISS index file, without re-encoding (e.g. Search-R1's
    ``e5_Flat.index`` for ``wiki-18.jsonl``, with ``encoder`` e5-base-v2, mean pooling, e5 prefixes).

    Vector ``i`` of the file must embed passage ``i`` of ``passages`` (the corpus's line order, as Search-R1 and
    FlashRAG build it) with ``encoder``: the file's dimension must equal the encoder's, its metric must be inner
    product and its vector count the passage count. The file is referenced by absolute path, not copied.
    """
    faiss = _faiss()
    faiss_path = Path(faiss_file).expanduser().resolve()
    index = _read_faiss(faiss_path, mmap=True)
    if index.d != encoder.dim:
        raise IndexManifestError(f"{faiss_path} holds {index.d}-d vectors but encoder {encoder.name} embeds in "
                                 f"{encoder.dim} dimensions")
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise IndexManifestError(f"{faiss_path} ranks by FAISS metric {index.metric_type}, not inner product "
                                 f"(METRIC_INNER_PRODUCT = {faiss.METRIC_INNER_PRODUCT})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with PassageWriter(out / PASSAGES_FILE) as writer:
        for chunk in _chunks(passages, 8192):
            writer.write(chunk)
        count = writer.count
    if count != index.ntotal:
        raise IndexManifestError(f"{faiss_path} holds {index.ntotal:,} vectors but the corpus {source or ''} has "
                                 f"{count:,} passages: they do not belong together")
    manifest = IndexManifest(
        engine="dense", corpus_sha256=content_hash, num_docs=count, corpus_path=str(source),
        encoder=encoder.describe(),
        parameters={"index_type": _index_type_name(index), "metric": "inner_product", "shards": [str(faiss_path)],
                    "imported": True, "faiss": faiss.__version__},
    )
    write_manifest(out, manifest)
    return manifest


# -- searching -------------------------------------------------------------------------------------------------------


_forked = False  # set in a child forked from this process (see _one_thread_if_forked)


def _mark_forked() -> None:
    global _forked
    _forked = True


os.register_at_fork(after_in_child=_mark_forked)


def _one_thread_if_forked() -> None:
    """GNU OpenMP deadlocks in a forked child whose parent had started its thread pool (torch's or FAISS's), e.g. a
    gymnasium AsyncVectorEnv worker or a multiprocessing fork: such a child encodes and searches on one thread."""
    global _forked
    if _forked:
        import torch

        torch.set_num_threads(1)
        _faiss().omp_set_num_threads(1)
        _forked = False


def checked_queries(queries: Sequence[str], topk: int) -> list[str]:
    """``queries`` as a list, after the checks every ``search`` makes (a lone string, ``topk < 1``, a non-string)."""
    if isinstance(queries, str):
        raise TypeError("search() takes a sequence of queries; wrap a single query in a list")
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    queries = list(queries)
    bad = next((i for i, q in enumerate(queries) if not isinstance(q, str)), None)
    if bad is not None:
        raise TypeError(f"query {bad} must be a str, got {type(queries[bad]).__name__}")
    return queries


class DenseRetriever:
    """Top-k passages by inner product between the query's and the passages' embeddings, from a dense index
    directory (``igpo-index build --engine dense`` or :func:`import_faiss_index`).

    Args:
        index_dir: the index directory.
        corpus_sha256: if given, the corpus this index must serve (a mismatch raises ``IndexManifestError``).
        encoder: an already-loaded :class:`DenseEncoder` (else one is loaded from ``model`` / the manifest).
        model: the encoder to query with (default: the one recorded in the manifest).
        mmap: memory-map the vectors (default) instead of reading them into this process.
        ef_search: HNSW search depth (default: the manifest's); larger is slower and finds more true neighbours.
        num_threads: if given, FAISS's and torch's thread counts (process-wide settings).
        **encoder_options: :class:`EncoderConfig` fields; unset ones default to the manifest's. Options that change
            the embedding space (pooling, prefixes, normalisation, other weights) are refused.

    ``search`` returns, per query, ``min(topk, len(self))`` passages, best first, scored by inner product.
    Pickles by reference to ``index_dir`` (the unpickled copy re-opens it and reloads the encoder).
    """

    engine = "dense"

    def __init__(
        self,
        index_dir: str | os.PathLike[str],
        *,
        corpus_sha256: str | None = None,
        encoder: DenseEncoder | None = None,
        model: str | None = None,
        mmap: bool = True,
        ef_search: int | None = None,
        num_threads: int | None = None,
        **encoder_options: Any,
    ) -> None:
        faiss = _faiss()
        self.index_dir = Path(index_dir)
        self.manifest = read_manifest(self.index_dir)
        if self.manifest.engine != "dense":
            raise IndexManifestError(f"{self.index_dir} holds a {self.manifest.engine!r} index, not a dense one")
        if corpus_sha256 is not None:
            self.manifest.check_corpus(corpus_sha256, index_dir=self.index_dir)
        recorded = self.manifest.encoder
        if encoder is None:
            options = {k: recorded[k] for k in ("query_prefix", "passage_prefix", "normalize", "max_length")
                       if k in recorded}
            if recorded.get("pooling") not in (None, "none"):
                options["pooling"] = recorded["pooling"]
            options.update(encoder_options)
            encoder = DenseEncoder(EncoderConfig(model=model or recorded["name"], **options))
        elif model is not None or encoder_options:
            raise ValueError("give either encoder= or model=/encoder options, not both")
        self.manifest.check_encoder(encoder.identity(), index_dir=self.index_dir)
        self.encoder = encoder
        if num_threads is not None:
            import torch

            faiss.omp_set_num_threads(max(1, num_threads))
            torch.set_num_threads(max(1, num_threads))
        self._options = {"mmap": mmap, "ef_search": ef_search, "num_threads": num_threads}
        self.content_hash: str = self.manifest.corpus_sha256
        self.store = PassageStore(self.index_dir / PASSAGES_FILE)
        shard_paths = [self.index_dir / name for name in self.manifest.parameters.get("shards", [])]
        if not shard_paths:
            raise IndexManifestError(f"{self.index_dir}: the manifest lists no FAISS shards")
        self._shards = [_read_faiss(path, mmap) for path in shard_paths]
        if len(self._shards) == 1:
            self.index = self._shards[0]
        else:
            # Shard ids follow one another. Not threaded: its std::threads would not exist in a forked child
            # (a deadlock); each shard's search is parallel over the batch through OpenMP anyway.
            self.index = faiss.IndexShards(encoder.dim, False, True)
            for shard in self._shards:
                self.index.add_shard(shard)
        if self.index.d != encoder.dim:
            raise IndexManifestError(f"{self.index_dir}: FAISS vectors are {self.index.d}-d, the encoder's "
                                     f"{encoder.dim}-d")
        if not self.index.ntotal == len(self.store) == self.manifest.num_docs:
            raise IndexManifestError(f"{self.index_dir}: {self.index.ntotal} vectors, {len(self.store)} passages and "
                                     f"{self.manifest.num_docs} in the manifest should all be equal")
        ef = ef_search if ef_search is not None else self.manifest.parameters.get("ef_search")
        if ef is not None and self.manifest.parameters.get("index_type") == "hnsw":
            for shard in self._shards:
                faiss.downcast_index(shard).hnsw.efSearch = int(ef)
        self.num_passages: int = len(self.store)

    @classmethod
    def from_faiss(cls, faiss_file, corpus, *, model: str, cache_dir=None, **options: Any) -> DenseRetriever:
        """Open a FAISS index file built outside igpo for the wiki-18 jsonl ``corpus`` (e.g. Search-R1's
        ``e5_Flat.index`` + ``wiki-18.jsonl`` with ``model="intfloat/e5-base-v2"``), without re-encoding.

        The first call writes the corpus's passages as Arrow (and a manifest referencing the FAISS file) under the
        index cache; later calls reuse them. ``options`` are :class:`EncoderConfig` fields and ``ef_search``,
        ``mmap``, ``num_threads``.
        """
        from igpo_envs.search.cache import cached_index_dir
        from igpo_envs.search.corpus import file_content_hash, iter_passages

        open_keys = ("mmap", "ef_search", "num_threads")
        open_options = {k: options.pop(k) for k in open_keys if k in options}
        faiss_path = Path(faiss_file).expanduser().resolve()
        corpus = Path(corpus).expanduser()
        if not corpus.is_file():
            raise FileNotFoundError(f"corpus file not found: {corpus}")
        encoder = DenseEncoder(EncoderConfig(model=model, **options))
        sha = file_content_hash(corpus)
        stat = faiss_path.stat()
        key = hashlib.sha256(repr((str(faiss_path), stat.st_size, stat.st_mtime_ns,
                                   sorted(encoder.identity().items()))).encode()).hexdigest()
        out = cached_index_dir(
            f"dense-import-{sha[:24]}-{key[:8]}",
            lambda tmp: import_faiss_index(faiss_path, iter_passages(corpus), tmp, encoder=encoder,
                                           content_hash=sha, source=str(corpus.resolve())),
            cache_dir=cache_dir,
        )
        return cls(out, corpus_sha256=sha, encoder=encoder, **open_options)

    def __len__(self) -> int:
        return self.num_passages

    def search(self, queries: Sequence[str], topk: int) -> list[list[Passage]]:
        """Top-``topk`` passages for each query, best first, in the order of ``queries``."""
        queries = checked_queries(queries, topk)
        if not queries:
            return []
        _one_thread_if_forked()
        scores, rows = self.index.search(self.encoder.encode_queries(queries), min(topk, self.num_passages))
        found = rows >= 0  # HNSW may return fewer than k (-1 rows)
        hits = self.store.take(rows[found], scores[found].tolist())
        out, start = [], 0
        for n in np.count_nonzero(found, axis=1).tolist():
            out.append(hits[start : start + n])
            start += n
        return out

    def __getstate__(self) -> dict:
        return {"index_dir": self.index_dir, "encoder": self.encoder, "options": self._options,
                "content_hash": self.content_hash}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["index_dir"], corpus_sha256=state["content_hash"], encoder=state["encoder"],
                      **state["options"])

    def __repr__(self) -> str:
        return (f"DenseRetriever({str(self.index_dir)!r}, passages={self.num_passages}, "
                f"index={self.manifest.parameters.get('index_type')}, encoder={self.encoder.name!r})")
