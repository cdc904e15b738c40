"""Retrieval at scale: bm25s-numba vs tantivy vs a Ray pool of tantivy searcher actors, at 100k and 1M passages.

    python benchmarks/retrieval_scale.py --sizes 100000 1000000 --out-json benchmarks/results/retrieval_scale.json

For each corpus size it generates a synthetic wiki-18 jsonl corpus (60-word passages over a Zipfian vocabulary of
pseudo-words, 2-word titles) and 2,000 queries (5 words drawn from a random passage), then measures, each engine in
its own process so peak memory is that engine's alone:

* build: ``igpo-index build`` wall time, peak RSS of the building process, index size on disk;
* serve: q/s answering batches of 64 with 1 and with 2 threads, p50/p99 latency of single queries, peak RSS;
* Ray (tantivy index): q/s of a ``RayRetrieverPool`` with 1 and 2 actors at batch 64, and Ray's per-batch
  overhead = (pool-of-1 time per batch - in-process time per batch) / in-process time, both in the same process;
* tantivy's top-10 overlap with bm25s (mean |A and B| / 10 over the queries).

Targets: Ray 2 actors >= 1.8x one actor; Ray per-batch overhead <= 10% at batch 64; overlap >= 85%.
The machine is shared, so the 1-minute load average is recorded before and after each measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BATCH = 64
TOPK = 10


# -- data --------------------------------------------------------------------------------------------------------
def make_vocab(size: int, rng: np.random.Generator) -> list[str]:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words: set[str] = set()
    while len(words) < size:
        lengths = rng.integers(4, 10, size=size)
        for n in lengths:
            words.add("".join(rng.choice(letters, size=n)))
            if len(words) >= size:
                break
    return sorted(words)


VOCAB_SIZE = 50_000
CORPUS_SEED = 0


def _zipf_order(vocab_size: int) -> np.ndarray:
    """Word index of Zipf rank 1, 2, ...: the sampler below gives word i the rank i + 1."""
    return np.arange(vocab_size)


def write_corpus(path: Path, n: int, seed: int = CORPUS_SEED, vocab_size: int = VOCAB_SIZE,
                 words_per_passage: int = 60) -> None:
    rng = np.random.default_rng(seed)
    vocab = np.array(make_vocab(vocab_size, rng), dtype=object)
    weights = 1.0 / np.arange(1, vocab_size + 1) ** 1.07  # Zipf-like, as in natural text
    weights /= weights.sum()
    chunk = 50_000
    with open(path, "w") as f:
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            text_ids = rng.choice(vocab_size, size=(m, words_per_passage), p=weights)
            title_ids = rng.integers(1000, vocab_size, size=(m, 2))  # titles from the rarer words
            lines = []
            for i in range(m):
                title = " ".join(vocab[title_ids[i]]).title()
                text = " ".join(vocab[text_ids[i]])
                lines.append(json.dumps({"id": str(start + i), "contents": f'"{title}"\n{text}'}))
            f.write("\n".join(lines) + "\n")


def make_queries(corpus: Path, n_docs: int, n_queries: int, seed: int = 1, skip_top: int = 100) -> list[str]:
    """Search-R1-like keyword queries: a passage's 2 title words + 3 of its words outside the ``skip_top`` most
    frequent ones (in real text those are stopwords and function words, which queries rarely carry and BM25
    weighs ~0; kept, they would make every query scan every posting list)."""
    rng = np.random.default_rng(seed)
    vocab = make_vocab(VOCAB_SIZE, np.random.default_rng(CORPUS_SEED))
    head = set(vocab[i] for i in _zipf_order(len(vocab))[:skip_top])
    wanted = set(rng.choice(n_docs, size=n_queries, replace=False).tolist())
    queries = []
    with open(corpus) as f:
        for i, line in enumerate(f):
            if i in wanted:
                title, text = json.loads(line)["contents"].split("\n", 1)
                words = sorted(set(text.split()) - head)
                picked = rng.choice(words, size=min(3, len(words)), replace=False)
                queries.append(" ".join([title.strip('"'), *picked]))
    rng.shuffle(queries)
    return queries


# -- workers (each in its own process) ---------------------------------------------------------------------------
def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def dir_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) / 2**20


def worker_build(corpus: str, engine: str, out: str) -> dict:
    from igpo_envs.search.index import build_index

    t0 = time.perf_counter()
    manifest = build_index(corpus, engine, out, progress=False)
    return {"build_s": time.perf_counter() - t0, "build_peak_rss_mb": peak_rss_mb(), "index_mb": dir_mb(Path(out)),
            "num_docs": manifest.num_docs}


def _pass_seconds(retriever, queries: list[str]) -> float:
    """Wall time to answer ``queries`` in batches of 64."""
    t0 = time.perf_counter()
    for i in range(0, len(queries), BATCH):
        retriever.search(queries[i : i + BATCH], TOPK)
    return time.perf_counter() - t0


def _best_interleaved(retrievers: dict, queries: list[str], rounds: int) -> dict[str, float]:
    """Best (shortest) pass time of each retriever over ``rounds`` rounds, the retrievers taking turns in each round,
    so load from other processes on a shared machine hits them alike and the ratios stay fair."""
    best = {name: float("inf") for name in retrievers}
    for _ in range(rounds):
        for name, retriever in retrievers.items():
            best[name] = min(best[name], _pass_seconds(retriever, queries))
    return best


def worker_search(index: str, queries_path: str, ids_out: str, rounds: str = "3") -> dict:
    from igpo_envs.search.index import open_index

    queries = json.loads(Path(queries_path).read_text())
    t0 = time.perf_counter()
    one = open_index(index, num_threads=1)
    open_s = time.perf_counter() - t0
    two = open_index(index, num_threads=2)
    for r in (one, two):
        r.search(queries[:BATCH], TOPK)  # warm-up (numba compilation, page cache)
    latencies = []
    for q in queries:
        t = time.perf_counter()
        one.search([q], TOPK)
        latencies.append(time.perf_counter() - t)
    best = _best_interleaved({"1t": one, "2t": two}, queries, int(rounds))
    Path(ids_out).write_text(json.dumps([[p.id for p in hits] for hits in one.search(queries, TOPK)]))
    return {"open_s": open_s, "qps_1t": len(queries) / best["1t"], "qps_2t": len(queries) / best["2t"],
            "p50_ms": 1e3 * float(np.percentile(latencies, 50)), "p99_ms": 1e3 * float(np.percentile(latencies, 99)),
            "serve_peak_rss_mb": peak_rss_mb()}


def worker_ray(index: str, queries_path: str, inline: str = "0", rounds: str = "3") -> dict:
    import psutil
    import ray

    from igpo_envs.search.index import open_index
    from igpo_envs.search.ray_pool import RAY_SYSTEM_CONFIG, RayRetrieverPool

    queries = json.loads(Path(queries_path).read_text())
    t0 = time.perf_counter()
    # 3 actors on 2 CPUs: they are used one pool at a time, so half a CPU reserved each is enough.
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             _system_config=RAY_SYSTEM_CONFIG if inline == "1" else None)
    init_s = time.perf_counter() - t0
    local = open_index(index, num_threads=1)
    pools = {n: RayRetrieverPool(index, num_actors=n, num_cpus_per_actor=0.5) for n in (1, 2)}
    for r in (local, *pools.values()):
        r.search(queries[:BATCH], TOPK)  # warm-up
    best = _best_interleaved({"local": local, "ray1": pools[1], "ray2": pools[2]}, queries, int(rounds))
    n_batches = -(-len(queries) // BATCH)
    out = {
        "ray_init_s": init_s,
        "local_qps": len(queries) / best["local"],
        "ray1_qps": len(queries) / best["ray1"],
        "ray2_qps": len(queries) / best["ray2"],
        "local_ms_per_batch": 1e3 * best["local"] / n_batches,
        "ray1_ms_per_batch": 1e3 * best["ray1"] / n_batches,
        "ray_overhead": best["ray1"] / best["local"] - 1,
        "ray_speedup_2v1": best["ray1"] / best["ray2"],
        "ray2_actor_rss_mb": [psutil.Process(pid).memory_info().rss / 2**20 for pid in pools[2].pids],
    }
    for pool in pools.values():
        pool.close()
    ray.shutdown()
    return out


def worker_overlap(tantivy_dir: str, bm25s_dir: str, queries_path: str) -> dict:
    """How far tantivy's top 10 agree with bm25s's. Synthetic passages all have 60 words, so many passages that
    match one query word score exactly alike and the 10th place is often a tie broken differently by each engine;
    ``untied_recall`` counts only bm25s hits scoring strictly above its 10th hit, which a ranking must keep."""
    from igpo_envs.search.index import open_index

    queries = json.loads(Path(queries_path).read_text())
    t_hits = open_index(tantivy_dir).search(queries, TOPK)
    b_hits = open_index(bm25s_dir, num_threads=1).search(queries, TOPK)
    raw, top1, untied = [], [], []
    for t, b in zip(t_hits, b_hits):
        t_ids = {p.id for p in t}
        raw.append(len(t_ids & {p.id for p in b}) / TOPK)
        top1.append(bool(t and b and t[0].id == b[0].id))
        head = {p.id for p in b if p.score > b[-1].score * (1 + 1e-5)}
        if head:
            untied.append(len(head & t_ids) / len(head))
    return {"overlap_top10": float(np.mean(raw)), "top1_agreement": float(np.mean(top1)),
            "untied_recall": float(np.mean(untied))}


# -- driver -------------------------------------------------------------------------------------------------------
def run_worker(*args: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args[0]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def load() -> float:
    return round(os.getloadavg()[0], 2)


def bench_size(n: int, workdir: Path, n_queries: int, reuse_builds: bool = False) -> dict:
    corpus = workdir / f"corpus_{n}.jsonl"
    if not corpus.exists():
        t0 = time.perf_counter()
        write_corpus(corpus, n)
        print(f"[{n:,}] corpus written in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    queries_path = workdir / f"queries_{n}.json"
    queries_path.write_text(json.dumps(make_queries(corpus, n, n_queries)))
    row: dict = {"passages": n, "queries": n_queries}
    for engine in ("bm25s", "tantivy"):
        out = workdir / f"{engine}_{n}"
        before = load()
        record = workdir / f"build_{engine}_{n}.json"
        if reuse_builds and record.exists() and (out / "igpo_index.json").exists():
            res = json.loads(record.read_text())  # same corpus, same build: measured by an earlier run
        else:
            subprocess.run(["rm", "-rf", str(out)], check=True)  # the build refuses a non-empty --out
            res = run_worker("build", str(corpus), engine, str(out))
            record.write_text(json.dumps(res))
        res.update(run_worker("search", str(out), str(queries_path), str(workdir / f"ids_{engine}_{n}.json")))
        res["load_before"], res["load_after"] = before, load()
        row[engine] = res
        print(f"[{n:,}] {engine}: {json.dumps(res)}", file=sys.stderr, flush=True)
    row.update(run_worker("overlap", str(workdir / f"tantivy_{n}"), str(workdir / f"bm25s_{n}"), str(queries_path)))
    for key, inline in (("ray", "0"), ("ray_inline", "1")):
        before = load()
        row[key] = run_worker("ray", str(workdir / f"tantivy_{n}"), str(queries_path), inline)
        row[key]["load_before"], row[key]["load_after"] = before, load()
        print(f"[{n:,}] {key}: {json.dumps(row[key])}", file=sys.stderr, flush=True)
    print(f"[{n:,}] overlap {row['overlap_top10']:.3f} top-1 {row['top1_agreement']:.3f} untied "
          f"{row['untied_recall']:.3f}", file=sys.stderr, flush=True)
    return row


def markdown(rows: list[dict]) -> str:
    lines = [
        "| passages | engine | build s | build peak MB | index MB | serve RSS MB | q/s 1 thr | q/s 2 thr | p50 ms "
        "| p99 ms |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        for e in ("bm25s", "tantivy"):
            x = r[e]
            lines.append(
                f"| {r['passages']:,} | {e}{'-numba' if e == 'bm25s' else ''} | {x['build_s']:.1f} | "
                f"{x['build_peak_rss_mb']:.0f} | {x['index_mb']:.0f} | {x['serve_peak_rss_mb']:.0f} | "
                f"{x['qps_1t']:,.0f} | {x['qps_2t']:,.0f} | {x['p50_ms']:.2f} | {x['p99_ms']:.2f} |"
            )
    lines += [
        "",
        "| passages | Ray config | Ray 1 actor q/s | Ray 2 actors q/s | 2 vs 1 (target >= 1.8x) "
        "| in-process ms/batch-64 | Ray-1 ms/batch-64 | Ray overhead (target <= 10%) | actor RSS MB | load avg |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        for key, label in (("ray", "default"), ("ray_inline", "RAY_SYSTEM_CONFIG")):
            y = r[key]
            lines.append(
                f"| {r['passages']:,} | {label} | {y['ray1_qps']:,.0f} | {y['ray2_qps']:,.0f} | "
                f"{y['ray_speedup_2v1']:.2f}x | {y['local_ms_per_batch']:.1f} | {y['ray1_ms_per_batch']:.1f} | "
                f"{100 * y['ray_overhead']:.1f}% | {max(y['ray2_actor_rss_mb']):.0f} | "
                f"{y['load_before']}–{y['load_after']} |"
            )
    lines += [
        "",
        "| passages | tantivy/bm25s top-10 overlap (target >= 85%) | same top-1 | recall of bm25s's untied top-10 |",
        "|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['passages']:,} | {100 * r['overlap_top10']:.1f}% | {100 * r['top1_agreement']:.1f}% | "
                     f"{100 * r['untied_recall']:.1f}% |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--workdir", default=None, help="where corpora and indexes go (default: a temp dir)")
    parser.add_argument("--out-json", default=None)
    parser.add_argument("--reuse-builds", action="store_true",
                        help="with --workdir: keep indexes (and their build figures) from an earlier run")
    parser.add_argument("--render", default=None, help="print the tables of an earlier --out-json and exit")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.render:
        print(markdown(json.loads(Path(args.render).read_text())["rows"]))
        return
    if args.worker:
        kind, *rest = args.worker
        workers = {"build": worker_build, "search": worker_search, "ray": worker_ray, "overlap": worker_overlap}
        result = workers[kind](*rest)
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory(prefix="igpo-retrieval-scale-") as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        rows = []
        for n in args.sizes:
            rows.append(bench_size(n, workdir, args.queries, args.reuse_builds))
    meta = {"cpus": os.cpu_count(), "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])}
    if args.out_json:
        Path(args.out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out_json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(markdown(rows))


if __name__ == "__main__":
    main()
