"""How hard igpo/SynthMultiHop-v0 is to *search*: the oracle plan vs searching the question itself, per hop count.

For each world size and question mode (names vs aliases, ``hard_queries``), on bm25s top-k:
- oracle: every hop's oracle query retrieves its gold passage (the solvability guarantee, target >= 99%);
- question -> hop 1: searching the whole question retrieves the first hop's passage;
- question -> answer: searching the whole question retrieves the passage that states the answer.

    python benchmarks/synthetic_difficulty.py --sizes 2000 --questions 500
    python benchmarks/synthetic_difficulty.py --sizes 2000,100000 --write BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from env_throughput import write_section  # a sibling script: `python benchmarks/...` puts benchmarks/ on the path

from igpo_envs.tasks.synthetic import get_retriever, get_world, search_success

SECTION = "## SynthMultiHop-v0 search difficulty"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="2000")
    parser.add_argument("--hops", default="1,2,3,4")
    parser.add_argument("--questions", type=int, default=500, help="questions per (size, mode, hops)")
    parser.add_argument("--distractors", type=int, default=2)
    parser.add_argument("--topk", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", default=None, help="write the table into this BENCHMARKS.md")
    args = parser.parse_args(argv)

    cache_dir = tempfile.mkdtemp(prefix="igpo-synth-difficulty-")
    lines = ["| passages | questions name the start by | hops | oracle | question -> hop 1 | question -> answer |",
             "|---:|---|---:|---:|---:|---:|"]
    try:
        for num_docs in (int(s) for s in args.sizes.split(",")):
            world = get_world(num_docs, args.distractors, args.seed)
            retriever = get_retriever(num_docs, args.distractors, args.seed, cache_dir)
            for hard in (False, True):
                for hops in (int(h) for h in args.hops.split(",")):
                    items = world.questions(args.questions, hops=hops, seed=1, hard_queries=hard)
                    s = search_success(retriever, items, args.topk)
                    lines.append(f"| {num_docs:,} | {'alias (hard_queries)' if hard else 'name'} | {hops} | "
                                 f"{s['oracle']:.1%} | {s['question_first_hop']:.1%} | "
                                 f"{s['question_answer_passage']:.1%} |")
                    print(lines[-1], flush=True)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    table = "\n".join(lines)
    print(table)
    if args.write:
        command = "python benchmarks/synthetic_difficulty.py " + " ".join(argv if argv is not None else sys.argv[1:])
        body = (f"Share of questions whose evidence each search strategy retrieves in bm25s top-{args.topk} "
                f"({args.questions} questions per row, distractors={args.distractors}). The oracle issues one query "
                f"per hop (`QAItem.metadata[\"oracle_queries\"]`); the baseline searches the question text.\n\n"
                f"{table}\n\nReproduce: `{command.strip()}`")
        write_section(Path(args.write), body, SECTION)


if __name__ == "__main__":
    main()
