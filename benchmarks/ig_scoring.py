"""Belief scoring speed: packed single-pass scoring vs the official per-turn full passes, in the same run.

For a rollout of T search turns (prompt ~60 tokens; each turn ~30 agent tokens + ~150 tokens of retrieved text; then a
~30-token answer turn) the beliefs v_0..v_T are scored with an ~8-token answer probe by:

* ``official``: one forward pass over history_k + probe per k, all logits (the released IGPO code's way);
* ``packed``: `answer_logprobs(method="packed")`, one call, 4-D mask, LM head on the scored positions only;
* ``cached``: `answer_logprobs(method="cached")`, the rollout pass with a KV cache, then all probes against it;
* ``rollout``: one forward over the rollout alone with all logits: what GRPO's old-log-prob pass already costs;
* ``probes``: the probe call of ``cached`` alone, on a rollout cache computed beforehand: the physical limit of
  what IG adds on top of a forward pass GRPO already runs (if that pass kept its KV cache).

Times are medians over ``--repeats`` interleaved rounds; ``max|diff|`` is between packed (and cached) and official;
peak memory is the resident-set growth of one call (VmHWM reset through /proc/self/clear_refs; Linux only).

    python benchmarks/ig_scoring.py --threads 1 --repeats 5 --markdown
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import time
from functools import partial

import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from igpo_envs.information_gain import answer_logprobs, batch_answer_logprobs, per_prefix_answer_logprobs
from igpo_envs.information_gain.packed import CachedRollout, cached_probe_logprobs

MODELS = {
    # name: (vocab, hidden, intermediate, layers, heads, kv_heads)
    "tiny": (2048, 128, 512, 4, 4, 2),
    "50M": (32000, 512, 1536, 11, 8, 2),
}
PROMPT, AGENT, OBSERVATION, ANSWER_TURN = 60, 30, 150, 30
PROBE_PREFIX, PROBE_ANSWER, PROBE_SUFFIX = 2, 4, 2  # "<answer> " + 4 answer tokens + " </answer>" = 8 tokens


def build_model(name: str, attn: str):
    vocab, hidden, inter, layers, heads, kv = MODELS[name]
    config = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv, tie_word_embeddings=True)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation=attn).eval()


def make_rollout(turns: int, vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    length = PROMPT + turns * (AGENT + OBSERVATION) + ANSWER_TURN
    ids = torch.randint(0, vocab, (length,), generator=g)
    boundaries = [PROMPT + k * (AGENT + OBSERVATION) for k in range(turns + 1)]
    probe = torch.randint(0, vocab, (PROBE_PREFIX + PROBE_ANSWER + PROBE_SUFFIX,), generator=g)
    mask = torch.tensor([False] * PROBE_PREFIX + [True] * PROBE_ANSWER + [False] * PROBE_SUFFIX)
    return ids, boundaries, probe, mask


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))


_libc = ctypes.CDLL("libc.so.6")
_libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD fixed: big buffers are mmapped and unmapped on free, so RSS tracks use


def peak_mb(fn) -> float:
    """Resident-memory growth during one call of ``fn``, in MiB."""
    _libc.malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = _rss_kb("VmRSS")
    fn()
    return (_rss_kb("VmHWM") - before) / 1024


def run(name: str, turns_list, repeats: int, attn: str) -> list[dict]:
    model = build_model(name, attn)
    vocab = MODELS[name][0]
    params = sum(p.numel() for p in model.parameters())
    rows = []
    for turns in turns_list:
        ids, bounds, probe, mask = make_rollout(turns, vocab, seed=turns)
        state = {}

        def probes_only(state=state, ids=ids, bounds=bounds, probe=probe, mask=mask):
            # The probe call alone, on a rollout cache computed outside the timed region (re-cropped each call).
            if "rollout" not in state:
                state["rollout"] = CachedRollout(model, ids, bounds, probe, mask)
            return cached_probe_logprobs(model, state["rollout"])

        with torch.no_grad():
            methods = {
                "official": partial(per_prefix_answer_logprobs, model, ids, bounds, probe, mask),
                "packed": partial(answer_logprobs, model, ids, bounds, probe, mask, method="packed"),
                "cached": partial(answer_logprobs, model, ids, bounds, probe, mask, method="cached"),
                "rollout": partial(model, input_ids=ids[None], use_cache=False),
                "probes": probes_only,
            }
            values = {k: methods[k]() for k in ("official", "packed", "cached", "probes")}  # also warms up
            methods["rollout"]()
            times = {k: [] for k in methods}
            for _ in range(repeats):  # interleaved, so load from other processes hits every method alike
                for key, fn in methods.items():
                    start = time.perf_counter()
                    fn()
                    times[key].append(time.perf_counter() - start)
            memory = {k: peak_mb(methods[k]) for k in ("official", "packed", "cached", "rollout")}
        t = {k: statistics.median(v) for k, v in times.items()}
        rows.append({
            "model": name, "params_M": params / 1e6, "turns": turns, "tokens": len(ids),
            **{f"t_{k}": v for k, v in t.items()},
            "speedup_packed": t["official"] / t["packed"], "speedup_cached": t["official"] / t["cached"],
            "packed_over_rollout": t["packed"] / t["rollout"], "cached_over_rollout": t["cached"] / t["rollout"],
            "probes_over_rollout": t["probes"] / t["rollout"],
            "diff_packed": (values["packed"] - values["official"]).abs().max().item(),
            "diff_cached": (values["cached"] - values["official"]).abs().max().item(),
            "diff_probes": (values["probes"] - values["official"]).abs().max().item(),
            **{f"mem_{k}": v for k, v in memory.items()},
        })
        print(_line(rows[-1]), flush=True)
    return rows


def run_group(name: str, group_turns, repeats: int, attn: str) -> dict:
    """A GRPO group of rollouts with different turn counts: `batch_answer_logprobs` (auto, and forced "packed")
    vs one `answer_logprobs` call per rollout vs the official per-turn passes."""
    model = build_model(name, attn)
    rollouts = [make_rollout(t, MODELS[name][0], seed=100 + i) for i, t in enumerate(group_turns)]
    seqs, bounds, probes, masks = (list(x) for x in zip(*rollouts))
    with torch.no_grad():
        methods = {
            "official": lambda: [per_prefix_answer_logprobs(model, *r) for r in rollouts],
            "one_by_one": lambda: [answer_logprobs(model, *r) for r in rollouts],
            "batched": lambda: batch_answer_logprobs(model, seqs, bounds, probes, masks),  # method="auto"
            "batched_packed": lambda: batch_answer_logprobs(model, seqs, bounds, probes, masks, method="packed"),
        }
        values = {k: fn() for k, fn in methods.items()}
        times = {k: [] for k in methods}
        for _ in range(repeats):
            for key, fn in methods.items():
                start = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - start)
        memory = {k: peak_mb(fn) for k, fn in methods.items()}
    diff = max((a - b).abs().max().item() for k in ("one_by_one", "batched", "batched_packed")
               for a, b in zip(values[k], values["official"]))
    r = {"model": name, "turns": list(group_turns), "diff": diff,
         **{f"t_{k}": statistics.median(v) for k, v in times.items()}, **{f"mem_{k}": v for k, v in memory.items()}}
    print(f"group {name} turns={r['turns']}: " + "  ".join(f"{k} {r['t_' + k] * 1e3:.1f} ms" for k in methods)
          + f"  max|diff| {diff:.1e}", flush=True)
    return r


def group_markdown(groups: list[dict]) -> str:
    keys = ("official", "one_by_one", "batched", "batched_packed")
    head = " | ".join(f"{k} ms" for k in keys)
    lines = [f"| model | rollout turns | {head} | official/batched | max abs diff | peak MiB {' / '.join(keys)} |",
             "|" + "---|" * (len(keys) + 5)]
    for r in groups:
        lines.append(f"| {r['model']} | {r['turns']} | " + " | ".join(f"{r['t_' + k] * 1e3:.1f}" for k in keys)
                     + f" | {r['t_official'] / r['t_batched']:.1f}x | {r['diff']:.1e} | "
                     + " / ".join(f"{r['mem_' + k]:.0f}" for k in keys) + " |")
    return "\n".join(lines)


def _line(r: dict) -> str:
    return (f"{r['model']:>5} T={r['turns']:>2} L={r['tokens']:>4}  official {r['t_official'] * 1e3:8.1f} ms  "
            f"packed {r['t_packed'] * 1e3:7.1f} ms ({r['speedup_packed']:4.1f}x)  cached {r['t_cached'] * 1e3:7.1f} ms "
            f"({r['speedup_cached']:4.1f}x)  rollout {r['t_rollout'] * 1e3:7.1f} ms  "
            f"probes {r['t_probes'] * 1e3:6.1f} ms"
            f"  max|diff| {max(r['diff_packed'], r['diff_cached']):.1e}")


def markdown(rows: list[dict]) -> str:
    head = ("| model | turns | tokens | official ms | packed ms | cached ms | rollout ms | probes ms | "
            "official/packed | official/cached | packed/rollout | cached/rollout | probes/rollout | max abs diff | "
            "peak MiB official / packed / cached / rollout |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['model']} ({r['params_M']:.1f}M) | {r['turns']} | {r['tokens']} | {r['t_official'] * 1e3:.1f} | "
            f"{r['t_packed'] * 1e3:.1f} | {r['t_cached'] * 1e3:.1f} | {r['t_rollout'] * 1e3:.1f} | "
            f"{r['t_probes'] * 1e3:.1f} | {r['speedup_packed']:.1f}x | {r['speedup_cached']:.1f}x | "
            f"{r['packed_over_rollout']:.2f} | {r['cached_over_rollout']:.2f} | {r['probes_over_rollout']:.2f} | "
            f"{max(r['diff_packed'], r['diff_cached'], r['diff_probes']):.1e} | "
            f"{r['mem_official']:.0f} / {r['mem_packed']:.0f} / {r['mem_cached']:.0f} / {r['mem_rollout']:.0f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--turns", nargs="+", type=int, default=[1, 3, 5, 10])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (the machine is shared)")
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    parser.add_argument("--group", nargs="*", type=int, default=[1, 2, 3, 3, 4, 5, 5, 8],
                        help="turn counts of the rollouts of one group for the batched comparison (none: skip)")
    parser.add_argument("--markdown", action="store_true", help="print the BENCHMARKS.md table at the end")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, attn {args.attn}, "
          f"repeats {args.repeats} (median)", flush=True)
    rows = [r for name in args.models for r in run(name, args.turns, args.repeats, args.attn)]
    groups = [run_group(name, args.group, args.repeats, args.attn) for name in args.models] if args.group else []
    if args.markdown:
        print(markdown(rows))
        if groups:
            print()
            print(group_markdown(groups))


if __name__ == "__main__":
    main()
