"""Env search throughput vs raw bm25s, on igpo/SynthMultiHop-v0 worlds of 100k and 1M passages.

Per corpus size, in one process and one run:
- world generation time (entities + passages) and BM25 index build time (tokenize, index, save to a fresh cache dir);
- raw bm25s: the retriever's own index and tokenizer vocabulary, queries tokenized with bm25s's `Tokenizer` and
  answered by ``BM25.retrieve`` (numba backend, same threads), returning document indices only;
- the env: the native vector env (``gym.make_vec(..., vectorization_mode="vector_entry_point")``) with 64 sub-envs,
  every sub-env issuing one ``<search>`` per step (the oracle plan of its question, cycled; 10 searches per
  episode, then a reset, which is counted against the env), observations and infos built as usual.
Both sides answer exactly the same query strings with the same topk; runs alternate (raw, env, raw, env, ...) and
the best run of each is compared, so background load on a shared machine hits both alike.

    python benchmarks/env_throughput.py                     # 100k and 1M (1M needs ~3 GB and a few minutes)
    python benchmarks/env_throughput.py --sizes 100000 --write BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import bm25s
import gymnasium as gym
import Stemmer
from bm25s.tokenization import Tokenizer

import igpo_envs  # noqa: F401  (registers the ids)
from igpo_envs.tasks.synthetic import get_retriever, get_world

SECTION = "## Env throughput"
SEARCHES_PER_EPISODE = 10


def raw_bm25s(retriever):
    """A plain bm25s setup over the retriever's saved index: its vocabulary, bm25s's tokenizer, ``retrieve``."""
    model = bm25s.BM25.load(str(retriever.index_dir), mmap=True, load_corpus=False, show_progress=False)
    model.backend = "numba"
    tokenizer = Tokenizer(stopwords="en", stemmer=Stemmer.Stemmer("english"))
    tokenizer.stem_to_sid = dict(model.vocab_dict)
    tokenizer.stem_to_sid.pop("", None)

    def search(queries: list[str], topk: int):
        ids = tokenizer.tokenize(queries, update_vocab=False, show_progress=False, allow_empty=False)
        return model.retrieve(ids, k=topk, n_threads=retriever.n_threads, show_progress=False, return_as="tuple")

    return search


def run_raw(search, steps: list[list[str]], topk: int) -> float:
    start = time.perf_counter()
    for queries in steps:
        search(queries, topk)
    return sum(map(len, steps)) / (time.perf_counter() - start)


def run_env(envs, steps: list[list[str]], num_envs: int) -> float:
    start = time.perf_counter()
    for t, queries in enumerate(steps):
        if t % SEARCHES_PER_EPISODE == 0:
            envs.reset(options={"question_index": list(range(num_envs))})
        _, _, terminated, truncated, _ = envs.step([f"<search> {q} </search>" for q in queries])
        if terminated.any() or (truncated.any() and (t + 1) % SEARCHES_PER_EPISODE):
            raise RuntimeError("an episode ended early: the benchmark must issue searches only")
    return sum(map(len, steps)) / (time.perf_counter() - start)


def benchmark_size(num_docs: int, args, cache_root: Path) -> dict:
    start = time.perf_counter()
    world = get_world(num_docs, args.distractors, args.seed)
    passages = world.passages
    generation = time.perf_counter() - start
    cache_dir = str(cache_root / f"docs-{num_docs}")
    start = time.perf_counter()
    retriever = get_retriever(num_docs, args.distractors, args.seed, cache_dir)
    build = time.perf_counter() - start
    assert not retriever.loaded_from_cache, "the index build must be measured from a fresh cache dir"

    envs = gym.make_vec("igpo/SynthMultiHop-v0", num_envs=args.num_envs, vectorization_mode="vector_entry_point",
                        num_docs=num_docs, distractors=args.distractors, seed=args.seed, hops=[1, 2, 3, 4],
                        num_questions=args.num_envs, cache_dir=cache_dir, topk=args.topk,
                        max_turns=SEARCHES_PER_EPISODE)
    plans = [item.metadata["oracle_queries"] for item in envs.unwrapped.items]
    steps = [[plan[t % len(plan)] for plan in plans] for t in range(args.steps)]
    search = raw_bm25s(retriever)
    run_raw(search, steps[:SEARCHES_PER_EPISODE], args.topk)  # warm up: numba kernels, page cache of the mmap
    run_env(envs, steps[:SEARCHES_PER_EPISODE], args.num_envs)
    raw, env = [], []
    for _ in range(args.repeats):
        raw.append(run_raw(search, steps, args.topk))
        env.append(run_env(envs, steps, args.num_envs))
    envs.close()
    del passages
    return dict(num_docs=num_docs, generation=generation, build=build, raw=max(raw), env=max(env),
                ratio=max(env) / max(raw), queries=len(steps) * args.num_envs, threads=retriever.n_threads)


def format_table(rows: list[dict], num_envs: int, topk: int) -> str:
    lines = [
        f"| passages | world generation (s) | index build (s) | raw bm25s (q/s) | env, {num_envs} sub-envs "
        f"(searches/s) | env / raw |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['num_docs']:,} | {r['generation']:.1f} | {r['build']:.1f} | {r['raw']:,.0f} | "
                     f"{r['env']:,.0f} | {100 * r['ratio']:.0f}% |")
    return "\n".join(lines)


def write_section(path: Path, body: str, heading: str = SECTION) -> None:
    """Replace (or append) one section of BENCHMARKS.md, leaving every other section untouched."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    section = f"{heading}\n\n{body.strip()}\n\n"
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated corpus sizes (passages)")
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--steps", type=int, default=60, help="vector steps per timed run (64 searches each)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating timed runs per side (best is kept)")
    parser.add_argument("--topk", type=int, default=3)
    parser.add_argument("--distractors", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default=None, help="index cache root (default: a temporary dir, removed)")
    parser.add_argument("--write", default=None, help="write the table into this BENCHMARKS.md")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    cache_root = Path(args.cache_dir or tempfile.mkdtemp(prefix="igpo-env-throughput-"))
    rows = []
    try:
        for num_docs in sizes:
            rows.append(benchmark_size(num_docs, args, cache_root))
            print(format_table(rows[-1:], args.num_envs, args.topk), flush=True)
    finally:
        if args.cache_dir is None:
            shutil.rmtree(cache_root, ignore_errors=True)
    table = format_table(rows, args.num_envs, args.topk)
    print(table)
    if args.write:
        command = "python benchmarks/env_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:])
        threads = rows[0]["threads"]
        body = (
            f"Env search steps per second through the native vector env ({args.num_envs} sub-envs, "
            f"`gym.make_vec(\"igpo/SynthMultiHop-v0\", vectorization_mode=\"vector_entry_point\")`) against raw bm25s "
            f"batched retrieval (numba backend, {threads} threads, same {rows[0]['queries']:,} oracle queries per run, "
            f"topk={args.topk}, same process; best of {args.repeats} alternating runs). Target: env >= 80% of raw. "
            f"World generation and index build (tokenize + index + save to a fresh cache dir) timed in the same run. "
            f"{os.cpu_count()} CPUs, machine shared with other jobs.\n\n"
            f"{table}\n\nReproduce: `{command.strip()}`"
        )
        write_section(Path(args.write), body)


if __name__ == "__main__":
    main()
