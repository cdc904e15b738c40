"""Dense retrieval benchmarks: recall on real questions, encoder cost, FAISS Flat vs HNSW at scale, env overhead.

Parts (each appends its rows to ``--out-json``; ``--render`` prints every table from that file):

- ``recall``: recall@1/3/10 of the gold (supporting) paragraphs of igpo/HotpotQA-Distractor-v0's 400 questions, the
  question as the query, over its 3,902-passage pool: bm25s, tantivy, dense (all-MiniLM-L6-v2, Flat) and hybrid
  (bm25s + dense, RRF k=60). Per question: the share of its gold paragraphs in the top k; mean over questions.
- ``encode``: encoder throughput on the pool's real passages (passages/s at batch 64) and query latency at batch 1
  and 64, for all-MiniLM-L6-v2 (6 layers, 384-d) and an e5-base-v2-shaped BERT (12 layers, 768-d, random weights
  with MiniLM's bert-base-uncased tokenizer: the cost of e5-base-v2's architecture, not its quality).
- ``faiss``: Flat and HNSW (M=32, efConstruction=40, efSearch=64) over N synthetic 768-d unit vectors (clustered:
  1,024 Gaussian centroids + unit noise), each size and type in its own subprocess: build seconds (``add`` only),
  peak RSS, index file size, RSS after opening the file memory-mapped, q/s at batch 1 and 64, HNSW recall@10
  against exact search. Queries are indexed vectors plus noise.
- ``env``: env search steps/s through the native vector env (64 sub-envs of igpo/HotpotQA-Distractor-v0, every
  sub-env searching its question each step, 10 searches per episode) with the dense engine, against raw
  sentence-transformers ``encode`` + FAISS ``search`` of the same queries (row ids only), interleaved step by step;
  wall-clock and process-CPU ratios (CPU time is less sensitive to other jobs on a shared machine).

    python benchmarks/dense_retrieval.py recall encode env --out-json benchmarks/results/dense_retrieval.json
    python benchmarks/dense_retrieval.py faiss --sizes 100000 1000000 --out-json benchmarks/results/dense_retrieval.json
    python benchmarks/dense_retrieval.py --render benchmarks/results/dense_retrieval.json
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DIM = 768


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def hotpotqa_corpus(tmp: Path) -> tuple[list, Path]:
    """The HotpotQA-Distractor questions and their passage pool written as a wiki-18 jsonl (every engine reads it)."""
    from igpo_envs.tasks.hotpotqa import load_hotpotqa_distractor

    items, passages = load_hotpotqa_distractor()
    path = tmp / "hotpotqa_pool.jsonl"
    with path.open("w") as f:
        for p in passages:
            f.write(json.dumps({"id": p.id, "contents": p.contents}) + "\n")
    return items, path


def work_dir(args):
    """``--cache-dir`` (kept, so parts run one after another share the HotpotQA pool's indexes), else a temp dir."""
    import contextlib

    if args.cache_dir:
        Path(args.cache_dir).mkdir(parents=True, exist_ok=True)
        return contextlib.nullcontext(args.cache_dir)
    return tempfile.TemporaryDirectory()


def minilm() -> str:
    from igpo_trainer.offline_models import minilm_dir

    return str(minilm_dir())


# -- recall ---------------------------------------------------------------------------------------------------------


def recall_at(hits: list[list], golds: list[tuple[str, ...]], k: int) -> float:
    return float(np.mean([len(set(g) & {p.id for p in h[:k]}) / len(g) for h, g in zip(hits, golds)]))


def run_recall(args) -> list[dict]:
    from igpo_envs.search import make_retriever

    rows = []
    with work_dir(args) as tmp:
        items, corpus = hotpotqa_corpus(Path(tmp))
        items = [it for it in items if it.gold_passage_ids]
        queries, golds = [it.question for it in items], [it.gold_passage_ids for it in items]
        model = minilm()
        engines = {
            "bm25s": dict(retriever="bm25s"),
            "tantivy": dict(retriever="tantivy"),
            "dense (MiniLM-L6, Flat)": dict(retriever="dense", model=model),
            "hybrid (bm25s + MiniLM, RRF k=60)": dict(retriever="hybrid", model=model),
        }
        for name, options in engines.items():
            if args.engines and options["retriever"] not in args.engines:
                continue
            start = time.perf_counter()
            retriever = make_retriever(corpus=corpus, cache_dir=tmp, **options)
            build = time.perf_counter() - start
            start = time.perf_counter()
            hits = retriever.search(queries, 10)
            seconds = time.perf_counter() - start
            row = dict(part="recall", engine=name, questions=len(queries), passages=retriever.num_passages
                       if hasattr(retriever, "num_passages") else None, build_s=build,
                       search_qps=len(queries) / seconds, load=load_average(),
                       **{f"recall@{k}": recall_at(hits, golds, k) for k in (1, 3, 10)},
                       both_at_10=float(np.mean([set(g) <= {p.id for p in h} for h, g in zip(hits, golds)])))
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


# -- encoder cost ---------------------------------------------------------------------------------------------------


def e5_base_shaped(tmp: Path) -> str:
    """A BERT-base (e5-base-v2's architecture) with random weights and MiniLM's bert-base-uncased tokenizer."""
    import shutil

    import torch
    from transformers import BertConfig, BertModel

    out = tmp / "e5-base-shaped"
    out.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (Path(minilm()) / name).exists():
            shutil.copy(Path(minilm()) / name, out / name)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                         intermediate_size=3072, max_position_embeddings=512)).eval().save_pretrained(out)
    return str(out)


def run_encode(args) -> list[dict]:
    import torch

    from igpo_envs.search.dense import DenseEncoder

    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        items, corpus = hotpotqa_corpus(Path(tmp))
        from igpo_envs.search.corpus import load_passages

        passages = load_passages(corpus)[: args.encode_passages]
        questions = [it.question for it in items]
        for name, model, max_length in (("all-MiniLM-L6-v2 (384-d)", minilm(), 256),
                                        ("e5-base-v2-shaped BERT-base (768-d)", e5_base_shaped(Path(tmp)), 256)):
            encoder = DenseEncoder(model, max_length=max_length, batch_size=64)
            encoder.encode_passages(passages[:64])  # warm-up
            start = time.perf_counter()
            encoder.encode_passages(passages)
            passage_s = time.perf_counter() - start
            encoder.encode_queries(questions[:64])
            start = time.perf_counter()
            for q in questions[:64]:
                encoder.encode_queries([q])
            single_ms = 1000 * (time.perf_counter() - start) / 64
            start = time.perf_counter()
            for i in range(0, 256, 64):
                encoder.encode_queries(questions[i : i + 64])
            batch_ms = 1000 * (time.perf_counter() - start) / 4
            row = dict(part="encode", encoder=name, threads=args.threads, passages=len(passages),
                       passages_per_s=len(passages) / passage_s, query_ms_b1=single_ms, query_ms_b64=batch_ms,
                       queries_per_s_b64=64000 / batch_ms, load=load_average())
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


# -- FAISS at scale (one subprocess per size and index type) ------------------------------------------------------


def synthetic_chunk(seed: int, chunk: int, rows: int, centroids: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng((seed, chunk))
    x = centroids[rng.integers(0, len(centroids), rows)] + rng.standard_normal((rows, DIM), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def faiss_case(n: int, index_type: str, seed: int, threads: int, queries: int) -> dict:
    import faiss

    faiss.omp_set_num_threads(threads)
    chunk_rows = 50_000
    centroids = np.random.default_rng(seed).standard_normal((1024, DIM), dtype=np.float32)
    base_rss = current_rss_mb()
    if index_type == "flat":
        index = faiss.IndexFlatIP(DIM)
    else:
        index = faiss.IndexHNSWFlat(DIM, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 40
    rng = np.random.default_rng(seed + 1)
    sources = np.sort(rng.choice(n, queries, replace=False))
    qvecs = np.zeros((queries, DIM), dtype=np.float32)
    add_s = 0.0
    for c, start in enumerate(range(0, n, chunk_rows)):
        x = synthetic_chunk(seed, c, min(chunk_rows, n - start), centroids)
        picked = sources[(sources >= start) & (sources < start + len(x))]
        qvecs[np.searchsorted(sources, picked)] = x[picked - start]
        t = time.perf_counter()
        index.add(x)
        add_s += time.perf_counter() - t
        del x
    build_peak = peak_rss_mb() - base_rss
    qvecs += 0.5 * rng.standard_normal(qvecs.shape, dtype=np.float32) / np.sqrt(DIM)
    qvecs /= np.linalg.norm(qvecs, axis=1, keepdims=True)
    with tempfile.TemporaryDirectory(dir=os.environ.get("DENSE_BENCH_TMP")) as tmp:
        path = Path(tmp) / "index.faiss"
        faiss.write_index(index, str(path))
        file_mb = path.stat().st_size / 2**20
        del index
        before_open = current_rss_mb()
        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
        open_rss = current_rss_mb() - before_open
        if index_type == "hnsw":
            faiss.downcast_index(index).hnsw.efSearch = 64
        index.search(qvecs[:64], 10)  # warm the page cache
        n1 = min(queries, 64 if index_type == "flat" else queries)
        t = time.perf_counter()
        for i in range(n1):
            index.search(qvecs[i : i + 1], 10)
        qps_b1 = n1 / (time.perf_counter() - t)
        found = np.zeros((queries, 10), dtype=np.int64)
        t = time.perf_counter()
        for i in range(0, queries, 64):
            found[i : i + 64] = index.search(qvecs[i : i + 64], 10)[1]
        qps_b64 = queries / (time.perf_counter() - t)
        serve_rss = current_rss_mb() - before_open
    row = dict(part="faiss", n=n, index_type=index_type, threads=threads, build_s=add_s, build_peak_mb=build_peak,
               file_mb=file_mb, bytes_per_vector=file_mb * 2**20 / n, open_rss_mb=open_rss, serve_rss_mb=serve_rss,
               qps_b1=qps_b1, qps_b64=qps_b64, load=load_average())
    if index_type == "hnsw":  # recall@10 against exact search, streaming the same vectors again
        best = np.full((queries, 10), -np.inf, dtype=np.float32)
        ids = np.zeros((queries, 10), dtype=np.int64)
        for c, start in enumerate(range(0, n, chunk_rows)):
            scores = qvecs @ synthetic_chunk(seed, c, min(chunk_rows, n - start), centroids).T
            all_scores = np.concatenate([best, scores], axis=1)
            all_ids = np.concatenate([ids, np.arange(start, start + scores.shape[1])[None].repeat(queries, 0)], 1)
            top = np.argpartition(-all_scores, 10, axis=1)[:, :10]
            best, ids = np.take_along_axis(all_scores, top, 1), np.take_along_axis(all_ids, top, 1)
        row["recall_at_10"] = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, ids)]))
    return row


def run_faiss(args) -> list[dict]:
    rows = []
    for n in args.sizes:
        for index_type in args.index_types:
            cmd = [sys.executable, __file__, "faiss-case", "--n", str(n), "--index-type", index_type,
                   "--threads", str(args.threads), "--queries", str(args.queries)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


# -- env overhead ---------------------------------------------------------------------------------------------------


def run_env(args) -> list[dict]:
    import gymnasium as gym
    from env_throughput import SEARCHES_PER_EPISODE, timed_pass

    import igpo_envs  # noqa: F401
    from igpo_envs.search import make_retriever

    rows = []
    with work_dir(args) as tmp:
        items, corpus = hotpotqa_corpus(Path(tmp))
        for index_type in args.env_index_types:
            retriever = make_retriever(corpus=corpus, retriever="dense", model=minilm(), index_type=index_type,
                                       cache_dir=tmp, num_threads=args.threads)
            envs = gym.make_vec("igpo/HotpotQA-Distractor-v0", num_envs=args.num_envs,
                                vectorization_mode="vector_entry_point", retriever=retriever, topk=3,
                                max_turns=SEARCHES_PER_EPISODE)
            questions = [it.question for it in envs.unwrapped.items[: args.num_envs]]
            steps = [questions] * args.steps

            def raw(queries, topk, r=retriever):  # the floor: encode + FAISS search, row ids only
                r.index.search(r.encoder.encode_queries(queries), topk)

            timed_pass(raw, envs, steps[:SEARCHES_PER_EPISODE], 3, args.num_envs)  # warm-up
            raw_clock, env_clock = timed_pass(raw, envs, steps, 3, args.num_envs)
            envs.close()
            searches = len(steps) * args.num_envs
            row = dict(part="env", index_type=index_type, num_envs=args.num_envs, searches=searches,
                       threads=args.threads, raw_qps=searches / raw_clock.wall, env_qps=searches / env_clock.wall,
                       ratio=raw_clock.wall / env_clock.wall, cpu_ratio=raw_clock.cpu / env_clock.cpu,
                       load=load_average())
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


# -- output ---------------------------------------------------------------------------------------------------------


def render(rows: list[dict]) -> str:
    out = []
    recall = [r for r in rows if r["part"] == "recall"]
    if recall:
        out += ["| engine | recall@1 | recall@3 | recall@10 | both gold in top 10 | q/s (batch of 400) |",
                "|---|---:|---:|---:|---:|---:|"]
        out += [f"| {r['engine']} | {r['recall@1']:.1%} | {r['recall@3']:.1%} | {r['recall@10']:.1%} | "
                f"{r['both_at_10']:.1%} | {r['search_qps']:,.0f} |" for r in recall]
        out.append("")
    encode = [r for r in rows if r["part"] == "encode"]
    if encode:
        out += ["| encoder (CPU threads) | passages/s (batch 64) | query ms, batch 1 | query ms, batch 64 "
                "| queries/s, batch 64 |", "|---|---:|---:|---:|---:|"]
        out += [f"| {r['encoder']} ({r['threads']}) | {r['passages_per_s']:,.1f} | {r['query_ms_b1']:.1f} | "
                f"{r['query_ms_b64']:.0f} | {r['queries_per_s_b64']:,.0f} |" for r in encode]
        out.append("")
    fa = [r for r in rows if r["part"] == "faiss"]
    if fa:
        out += ["| vectors | index | build s | build peak MB | file MB | bytes/vector | RSS after mmap open MB "
                "| RSS after searching MB | q/s batch 1 | q/s batch 64 | HNSW recall@10 |",
                "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        out += [f"| {r['n']:,} | {r['index_type']} | {r['build_s']:.1f} | {r['build_peak_mb']:,.0f} | "
                f"{r['file_mb']:,.0f} | {r['bytes_per_vector']:,.0f} | {r['open_rss_mb']:,.0f} | "
                f"{r['serve_rss_mb']:,.0f} | {r['qps_b1']:,.1f} | {r['qps_b64']:,.1f} | "
                f"{r.get('recall_at_10', float('nan')):.1%} |".replace("nan%", "exact") for r in fa]
        out.append("")
    env = [r for r in rows if r["part"] == "env"]
    if env:
        out += ["| index | sub-envs | searches | raw encode + FAISS (q/s) | env (searches/s) | env / raw, wall "
                "| env / raw, process CPU |", "|---|---:|---:|---:|---:|---:|---:|"]
        out += [f"| {r['index_type']} | {r['num_envs']} | {r['searches']:,} | {r['raw_qps']:,.0f} | "
                f"{r['env_qps']:,.0f} | {r['ratio']:.0%} | {r['cpu_ratio']:.0%} |" for r in env]
        out.append("")
    loads = sorted({r["load"] for r in rows})
    out.append(f"Load averages (1/5/15 min) seen at the rows: {', '.join(loads)}")
    return "\n".join(out)


def _row_key(row: dict) -> tuple:
    """Rows a re-run replaces: the same part and the same configuration."""
    return row["part"], row.get("engine"), row.get("encoder"), row.get("n"), row.get("index_type")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="*", help="recall, encode, faiss, env (any of them, in this order)")
    parser.add_argument("--out-json", default=None, help="append rows to this JSON list")
    parser.add_argument("--render", default=None, help="print the tables of a saved run and exit")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--index-types", nargs="+", default=["flat", "hnsw"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--encode-passages", type=int, default=1024)
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--engines", nargs="+", default=None, help="recall: only these (bm25s tantivy dense hybrid)")
    parser.add_argument("--env-index-types", nargs="+", default=["flat"], help="env: dense index types to run")
    parser.add_argument("--cache-dir", default=None, help="keep indexes here (shared by the parts of one run)")
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--index-type", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.render:
        print(render(json.loads(Path(args.render).read_text())))
        return
    if args.parts == ["faiss-case"]:
        print(json.dumps(faiss_case(args.n, args.index_type, 0, args.threads, args.queries)))
        return
    runners = {"recall": run_recall, "encode": run_encode, "faiss": run_faiss, "env": run_env}
    unknown = [part for part in args.parts if part not in runners]
    if unknown or not args.parts:
        parser.error(f"choose parts from {', '.join(runners)} (got {unknown or 'none'})")
    for part in args.parts:
        rows = runners[part](args)
        if args.out_json:
            path = Path(args.out_json)
            saved = json.loads(path.read_text()) if path.exists() else []
            new = {_row_key(r) for r in rows}
            saved = [r for r in saved if _row_key(r) not in new] + rows
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(saved, indent=1) + "\n")
        print(render(rows))


if __name__ == "__main__":
    main()
