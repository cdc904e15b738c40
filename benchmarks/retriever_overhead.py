"""BM25Retriever.search vs raw bm25s retrieval of the same queries, in one process and one run.

- raw: ``BM25.retrieve`` on the retriever's own bm25s index, queries pre-tokenized to token ids outside the timer,
  document indices only (the floor any wrapper can reach);
- ours: ``BM25Retriever.search`` from query strings to ``Passage`` objects (tokenization, retrieval, dropping
  zero-score rows, passage lookup in the memory-mapped Arrow table).
Batches alternate between the two sides so background load on a shared machine hits both alike.

    python benchmarks/retriever_overhead.py --docs 100000 --batch 64 --threads 2
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

from igpo_envs.search.bm25 import BM25Retriever
from igpo_envs.types import Passage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--topk", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    vocab = [f"w{i}x" for i in range(20_000)]
    passages = [Passage(str(i), f"Entity {i}", " ".join(rng.choices(vocab, k=60))) for i in range(args.docs)]
    queries = [" ".join(rng.choices(vocab, k=4)) for _ in range(args.queries)]
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        retriever = BM25Retriever.from_passages(passages, cache_dir=cache, n_threads=args.threads)
        print(f"index of {args.docs:,} passages built in {time.perf_counter() - start:.1f} s")
        token_ids = [list(ids) for ids in retriever._tokenizer.streaming_tokenize(queries, update_vocab=False)]
        batches = [slice(i, i + args.batch) for i in range(0, len(queries), args.batch)]
        retriever.search(queries[batches[0]], args.topk)  # warm up (numba kernel load/compile)

        raw = ours = 0.0
        for n, batch in enumerate(batches):
            for side in (("raw", "ours") if n % 2 == 0 else ("ours", "raw")):
                start = time.perf_counter()
                if side == "raw":
                    retriever._bm25.retrieve(token_ids[batch], k=args.topk, n_threads=args.threads,
                                             show_progress=False)
                    raw += time.perf_counter() - start
                else:
                    retriever.search(queries[batch], args.topk)
                    ours += time.perf_counter() - start
    print(f"raw bm25s      {args.queries / raw:8.0f} queries/s")
    print(f"BM25Retriever  {args.queries / ours:8.0f} queries/s")
    print(f"ratio          {raw / ours:8.2f} (BM25Retriever throughput / raw bm25s throughput)")


if __name__ == "__main__":
    main()
