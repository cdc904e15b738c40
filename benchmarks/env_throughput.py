"""Env search throughput vs raw bm25s, on igpo/SynthMultiHop-v0 worlds of 100k and 1M passages.

Per corpus size, in one process and one run:
- world generation time (entities + passages) and BM25 index build time (tokenize, index, save to a fresh cache dir);
- raw bm25s: the retriever's own index and tokenizer vocabulary, queries tokenized with bm25s's `Tokenizer` and
  answered by ``BM25.retrieve`` (numba backend, same threads), returning document indices only;
- the env: the native vector env (``gym.make_vec(..., vectorization_mode="vector_entry_point")``) with 64 sub-envs,
  every sub-env issuing one ``<search>`` per step (the oracle plan of its question, cycled; 10 searches per
  episode, then a reset, which is counted against the env), observations and infos built as usual.
Both sides answer exactly the same query strings with the same topk, interleaved step by step (which side goes
first alternates), and their totals are compared in wall time and in CPU time (``time.process_time``, all threads
of the process): on a loaded machine wall time mostly measures the wait for a core, CPU time the work itself.
"env: own logic" is the CPU time of the env's thread minus that thread's CPU time inside ``retriever.search``.
OpenMP threads wait passively (``OMP_WAIT_POLICY=PASSIVE``, unless set): a spinning idle worker would bill its
spin to whatever runs next.

    python benchmarks/env_throughput.py                     # 100k and 1M (1M needs ~3 GB and a few minutes)
    python benchmarks/env_throughput.py --sizes 100000 --write BENCHMARKS.md
    python benchmarks/env_throughput.py --sizes 100000 --warm   # the env's own logic with warm caches (diagnostic)
    python benchmarks/env_throughput.py --sizes 100000 --no-memo   # every query as if never seen before

The env's `BM25Retriever` remembers the token ids of the queries and the passages it has returned (``memo_size``);
the oracle plans repeat, so after the first pass every query and passage is remembered (retrieval itself always
runs, on both sides). ``--no-memo`` turns those memos off: the cost of queries the env has never seen.

``--warm`` answers the env's searches from a memo and leaves raw bm25s out: what the env's Python costs when nothing
evicts its state from the CPU caches. In the real run, bm25s streams a score array of every passage per query between
two env steps, so the env's own logic there also pays for reading its episodes back from memory.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before numba starts its OpenMP threads (see the docstring)

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


class Clock:
    """Seconds added up: wall, CPU of the whole process (``time.process_time``, numba's threads included) and CPU of
    the calling thread (``time.thread_time``: the env's own Python logic runs there)."""

    def __init__(self):
        self.wall = self.cpu = self.thread = 0.0

    def __enter__(self):
        self._start = time.perf_counter(), time.process_time(), time.thread_time()
        return self

    def __exit__(self, *exc):
        self.wall += time.perf_counter() - self._start[0]
        self.cpu += time.process_time() - self._start[1]
        self.thread += time.thread_time() - self._start[2]

    def __iadd__(self, other: Clock) -> Clock:
        self.wall, self.cpu, self.thread = self.wall + other.wall, self.cpu + other.cpu, self.thread + other.thread
        return self


def timed_pass(search, envs, steps: list[list[str]], topk: int, num_envs: int) -> tuple[Clock, Clock]:
    """One pass over ``steps``, alternating which side goes first at every step so that background load on a shared
    machine hits raw bm25s and the env alike; returns the time each side spent."""
    raw, env = Clock(), Clock()
    for t, queries in enumerate(steps):
        for side in ((0, 1) if t % 2 else (1, 0)):
            if side == 0:
                with raw:
                    search(queries, topk)
                continue
            with env:
                if t % SEARCHES_PER_EPISODE == 0:  # a new episode every 10 searches; the reset counts against the env
                    envs.reset(options={"question_index": list(range(num_envs))})
                _, _, terminated, truncated, _ = envs.step([f"<search> {q} </search>" for q in queries])
            if terminated.any() or (truncated.any() and (t + 1) % SEARCHES_PER_EPISODE):
                raise RuntimeError("an episode ended early: the benchmark must issue searches only")
    return raw, env


def memoized(search):
    """``search`` that answers a batch of queries it has seen with its first answer (the same passages in fresh
    lists): retrieval then costs next to nothing and touches nothing new, so the CPU caches stay warm."""
    answers = {}

    def answer(queries, topk):
        key = (tuple(queries), topk)
        if key not in answers:
            answers[key] = search(queries, topk)
        return [list(result) for result in answers[key]]

    return answer


def time_calls(obj, method: str) -> Clock:
    """Wrap ``obj.method`` (as an instance attribute) to add up the time spent in it; returns the running total."""
    total = Clock()
    inner = getattr(obj, method)

    def timed(*args, **kwargs):
        with total:
            return inner(*args, **kwargs)

    setattr(obj, method, timed)
    return total


def print_profile(run, num_docs: int, top: int = 12) -> None:
    """cProfile one interleaved pass and print where the time goes (both sides, by own time)."""
    profiler = cProfile.Profile()
    profiler.runcall(run)
    print(f"\nProfile of one pass at {num_docs:,} passages (raw bm25s and env together), by own time:")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(top)


def benchmark_size(num_docs: int, args, cache_root: Path) -> dict:
    start = time.perf_counter()
    world = get_world(num_docs, args.distractors, args.seed)
    passages = world.passages
    generation = time.perf_counter() - start
    cache_dir = str(cache_root / f"docs-{num_docs}")
    start = time.perf_counter()
    threads = args.threads or None  # None: every CPU
    retriever = get_retriever(num_docs, args.distractors, args.seed, cache_dir, n_threads=threads)
    build = time.perf_counter() - start
    if retriever.loaded_from_cache:  # --cache-dir with an existing index: this is a load, not a build
        print(f"note: index for {num_docs:,} passages loaded from {cache_dir}; 'index build' is its load time")

    envs = gym.make_vec("igpo/SynthMultiHop-v0", num_envs=args.num_envs, vectorization_mode="vector_entry_point",
                        num_docs=num_docs, distractors=args.distractors, seed=args.seed, hops=[1, 2, 3, 4],
                        num_questions=args.num_envs, cache_dir=cache_dir, topk=args.topk,
                        max_turns=SEARCHES_PER_EPISODE, retriever_threads=threads)
    if args.no_memo:
        envs.unwrapped.retriever.memo_size = 0
    plans = [item.metadata["oracle_queries"] for item in envs.unwrapped.items]
    steps = [[plan[t % len(plan)] for plan in plans] for t in range(args.steps)]
    search = raw_bm25s(retriever)
    if args.warm:  # the env alone, its retriever memoized: raw bm25s idles (see --warm)
        envs.unwrapped.retriever.search = memoized(envs.unwrapped.retriever.search)
        search = lambda queries, topk: None  # noqa: E731
        timed_pass(search, envs, steps, args.topk, args.num_envs)  # fills the memo
    timed_pass(search, envs, steps[:SEARCHES_PER_EPISODE], args.topk, args.num_envs)  # warm-up: numba, page cache
    in_retriever = time_calls(envs.unwrapped.retriever, "search")  # splits env time: retrieval vs env logic
    raw, env = Clock(), Clock()
    for _ in range(args.repeats):
        r, e = timed_pass(search, envs, steps, args.topk, args.num_envs)
        raw += r
        env += e
    del envs.unwrapped.retriever.search  # drop the timing wrapper
    if args.profile and not args.warm:
        print_profile(lambda: timed_pass(search, envs, steps, args.topk, args.num_envs), num_docs)
    envs.close()
    del passages
    queries = args.repeats * len(steps) * args.num_envs
    logic_us = 1e6 * (env.thread - in_retriever.thread) / queries
    if args.warm:
        return dict(num_docs=num_docs, queries=queries, logic_us=logic_us)
    return dict(num_docs=num_docs, generation=generation, build=build, queries=queries, threads=retriever.n_threads,
                raw=queries / raw.wall, env=queries / env.wall, ratio=raw.wall / env.wall,
                cpu_ratio=raw.cpu / env.cpu, raw_us=1e6 * raw.cpu / queries,
                retrieval_us=1e6 * in_retriever.cpu / queries,
                logic_us=logic_us)


def format_table(rows: list[dict], num_envs: int, topk: int) -> str:
    lines = [
        f"| passages | world generation (s) | index build (s) | raw bm25s (q/s) | env, {num_envs} sub-envs "
        f"(searches/s) | env / raw (wall) | env / raw (CPU time) | raw (CPU µs/query) | env: in retriever.search "
        f"(CPU µs/search) | env: own logic (CPU µs/search, its thread) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['num_docs']:,} | {r['generation']:.1f} | {r['build']:.1f} | {r['raw']:,.0f} | "
                     f"{r['env']:,.0f} | {100 * r['ratio']:.0f}% | {100 * r['cpu_ratio']:.0f}% | {r['raw_us']:.0f} | "
                     f"{r['retrieval_us']:.0f} | {r['logic_us']:.1f} |")
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
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the steps (totals are compared)")
    parser.add_argument("--topk", type=int, default=3)
    parser.add_argument("--distractors", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0,
                        help="numba threads per batched search, both sides (default 0: every CPU)")
    parser.add_argument("--cache-dir", default=None, help="index cache root (default: a temporary dir, removed)")
    parser.add_argument("--write", default=None, help="write the table into this BENCHMARKS.md")
    parser.add_argument("--profile", action="store_true", help="also cProfile one pass per size and print it")
    parser.add_argument("--warm", action="store_true",
                        help="diagnostic: the env alone, its searches answered from a memo of their first answers and "
                             "raw bm25s left out, so no retrieval evicts the env's state from the CPU caches between "
                             "steps; prints the env's own logic per search with warm caches (no throughput, no ratios)")
    parser.add_argument("--no-memo", action="store_true",
                        help="turn off the env retriever's memos of query token ids and passages (BM25Retriever."
                             "memo_size = 0): every search tokenizes its query and reads its passages from Arrow")
    args = parser.parse_args(argv)
    if args.warm and args.write:
        parser.error("--warm measures the env's own logic alone; it writes no table (drop --write)")
    sizes = [int(s) for s in args.sizes.split(",")]

    cache_root = Path(args.cache_dir or tempfile.mkdtemp(prefix="igpo-env-throughput-"))
    rows = []
    try:
        for num_docs in sizes:
            rows.append(benchmark_size(num_docs, args, cache_root))
            if args.warm:
                print(f"{num_docs:,} passages, warm caches (--warm): the env's own logic "
                      f"{rows[-1]['logic_us']:.1f} CPU µs/search over {rows[-1]['queries']:,} searches", flush=True)
                continue
            print(format_table(rows[-1:], args.num_envs, args.topk), flush=True)
    finally:
        if args.cache_dir is None:
            shutil.rmtree(cache_root, ignore_errors=True)
    if args.warm:
        return
    table = format_table(rows, args.num_envs, args.topk)
    print(table)
    if args.write:
        command = "python benchmarks/env_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:])
        threads = rows[0]["threads"]
        body = (
            f"Env search steps per second through the native vector env ({args.num_envs} sub-envs, "
            f"`gym.make_vec(\"igpo/SynthMultiHop-v0\", vectorization_mode=\"vector_entry_point\")`) against raw bm25s "
            f"batched retrieval (numba backend, {threads} threads, the same {rows[0]['queries']:,} oracle queries, "
            f"topk={args.topk}, same process, the two sides interleaved step by step), in wall time and in CPU time "
            f"(all threads). Target: env >= 80% of raw, env's own logic <= 10 µs per search. The env's retriever memos "
            f"(query token ids, passages) are {'off (--no-memo)' if args.no_memo else 'on'}. "
            f"World generation and index build (tokenize + index + save to a fresh cache dir) timed in the same run. "
            f"{os.cpu_count()} CPUs, machine shared with other jobs.\n\n"
            f"{table}\n\nReproduce: `{command.strip()}`"
        )
        write_section(Path(args.write), body)


if __name__ == "__main__":
    main()
