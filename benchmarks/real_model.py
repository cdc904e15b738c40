"""A real pretrained model through igpo, on CPU: SmolLM2-135M-Instruct on igpo/HotpotQA-Distractor-v0 (issue 10).

SmolLM2-135M-Instruct comes from the package index (`igpo_trainer.offline_models.smollm2_dir`, no model hub). The runs
are sized for a shared 2-core CPU: one passage per search (``topk=1``), passages cut to their first
``passage_words`` words (a corpus file written by ``prepare``; BM25 indexes the cut text), 48 new tokens per turn.
Question split (documented in BENCHMARKS.md): the env's 400 questions in shipped order, indices ``0:360`` train
(demonstrations), ``360:400`` held-out (every evaluation and the IG-signal measurement).

    python benchmarks/real_model.py prepare       # held-out questions file + cut corpus under --work
    python benchmarks/real_model.py zero-shot     # (a) igpo-eval --agent hf:<SmolLM2>, tag and tool_call protocols
    python benchmarks/real_model.py ig-signal     # (b) IG of gold vs non-gold searches, ROC AUC, before/after the fix
    python benchmarks/real_model.py warm-start    # (7) igpo-warmstart on train questions, then igpo-eval held-out
    python benchmarks/real_model.py train-steps   # (c) two igpo-train steps from the warm-started policy
    python benchmarks/real_model.py report        # markdown tables of everything measured so far

Each step runs the project's own commands in-process (`igpo_envs.cli.main`, `igpo_trainer.warmstart_cli.main`,
`igpo_trainer.cli.main`) with the exact arguments it prints, and writes JSON under ``benchmarks/results/real_model/``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

ENV_ID = "igpo/HotpotQA-Distractor-v0"
RESULTS = Path(__file__).resolve().parent / "results" / "real_model"


@dataclass(frozen=True)
class Settings:
    work: str = "runs/real_model"  # data files, models and checkpoints
    train_questions: str = "0:360"
    heldout_questions: str = "360:400"
    passage_words: int = 40
    topk: int = 1
    max_turns: int = 4
    max_new_tokens: int = 48
    batch_size: int = 20
    seed: int = 0

    @property
    def heldout_file(self) -> Path:
        return Path(self.work) / "heldout_questions.jsonl"

    @property
    def corpus_file(self) -> Path:
        return Path(self.work) / f"corpus_{self.passage_words}w.jsonl"

    @property
    def sft_dir(self) -> Path:
        return Path(self.work) / "smollm2_sft"

    def env_kwargs(self, protocol: str = "tag", heldout: bool = True) -> dict:
        kwargs = {"corpus": str(self.corpus_file), "topk": self.topk, "max_turns": self.max_turns,
                  "protocol": protocol}
        return {"questions": str(self.heldout_file), **kwargs} if heldout else kwargs


def _indices(spec: str) -> list[int]:
    start, stop = spec.split(":")
    return list(range(int(start), int(stop)))


def _write(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
    print(f"wrote {path}")
    return path


def _read(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _quote(argv: list[str]) -> str:
    import shlex

    return " ".join(shlex.quote(a) for a in argv)


# ------------------------------------------------------------------------------------------------------- prepare
def prepare(s: Settings) -> None:
    """The held-out questions as a FlashRAG jsonl (with gold ids/titles) and the pool cut to ``passage_words``."""
    from igpo_envs.tasks.hotpotqa import load_hotpotqa_distractor

    items, passages = load_hotpotqa_distractor()
    Path(s.work).mkdir(parents=True, exist_ok=True)
    with s.heldout_file.open("w", encoding="utf-8") as f:
        for i in _indices(s.heldout_questions):
            item = items[i]
            f.write(json.dumps({"id": item.id, "question": item.question, "golden_answers": list(item.golden_answers),
                                "data_source": item.data_source, "gold_passage_ids": list(item.gold_passage_ids),
                                "gold_titles": list(item.gold_titles)}) + "\n")
    with s.corpus_file.open("w", encoding="utf-8") as f:
        for p in passages:  # same ids (hp-<n>) as the env's own pool, so gold recall is comparable
            f.write(json.dumps({"id": p.id, "title": p.title, "text": " ".join(p.text.split()[: s.passage_words])})
                    + "\n")
    print(f"wrote {s.heldout_file} ({len(_indices(s.heldout_questions))} questions) and {s.corpus_file} "
          f"({len(passages)} passages cut to {s.passage_words} words)")


def _check_prepared(s: Settings) -> None:
    if not (s.heldout_file.is_file() and s.corpus_file.is_file()):
        prepare(s)


# ------------------------------------------------------------------------------------------------------ evaluation
def _eval_argv(s: Settings, model: str, protocol: str, transcript: str, out: Path, episodes: int | None) -> list[str]:
    episodes = episodes or len(_indices(s.heldout_questions))
    return ["--env", ENV_ID, "--agent", f"hf:{model}", "--episodes", str(episodes),
            "--seed", str(s.seed), "--env-kwargs", json.dumps(s.env_kwargs(protocol)),
            "--max-new-tokens", str(s.max_new_tokens), "--batch-size", str(s.batch_size),
            "--transcript", transcript, "--no-progress", "--json", str(out)]


def run_eval(s: Settings, model: str, protocol: str, transcript: str, tag: str, episodes: int | None = None) -> dict:
    """``igpo-eval`` on the held-out questions (the first ``episodes`` of its seeded order; default all); returns its
    summary, the commonest format errors and the question ids played."""
    from igpo_envs.cli import main as igpo_eval

    out = Path(s.work) / f"eval_{tag}_{protocol}.json"
    argv = _eval_argv(s, model, protocol, transcript, out, episodes)
    print("igpo-eval " + _quote(argv), flush=True)
    start = time.perf_counter()
    igpo_eval(argv)
    seconds = time.perf_counter() - start
    (result,) = json.loads(out.read_text())["results"]
    errors = Counter((r["error"] or "").split(":")[0] for r in result["per_episode"] if r["error"])
    summary = {k: result[k] for k in ("episodes", "em", "f1", "gold_recall", "format_error_rate", "searches",
                                      "turns", "truncation_rate")}
    examples = [r["prediction"] for r in result["per_episode"] if r["prediction"]][:5]
    return {**summary, "protocol": protocol, "transcript": transcript, "seconds": seconds,
            "top_errors": errors.most_common(3), "example_predictions": examples,
            "question_ids": [r["question_id"] for r in result["per_episode"]],
            "command": "igpo-eval " + _quote(argv)}


def zero_shot(s: Settings) -> None:
    from igpo_trainer.offline_models import smollm2_dir

    _check_prepared(s)
    model = str(smollm2_dir())
    rows = [run_eval(s, model, protocol, "chat", "zero_shot") for protocol in ("tag", "tool_call")]
    _write("zero_shot", {"settings": asdict(s), "model": "SmolLM2-135M-Instruct", "rows": rows})


# ------------------------------------------------------------------------------------------------------- IG signal
def old_tokenize_probe(tokenizer, answer: str, protocol: str, style: str) -> tuple[list[int], list[bool]]:
    """The probe before the fix, kept as a reference: prefix, answer and suffix tokenised apart and concatenated (a
    byte-level BPE then scores ``'Ġ' + 'Paris'`` where the model writes ``'ĠParis'``)."""
    from igpo_envs.protocol import answer_probe

    prefix, gold, suffix = (tokenizer(p, add_special_tokens=False)["input_ids"]
                            for p in answer_probe(answer, protocol, style))
    return prefix + gold + suffix, [False] * len(prefix) + [True] * len(gold) + [False] * len(suffix)


def new_tokenize_probe(tokenizer, answer: str, protocol: str, style: str) -> tuple[list[int], list[bool]]:
    """The library's probe as it is now (`igpo_envs.information_gain.tokenize_probe`)."""
    from igpo_envs.information_gain import tokenize_probe

    ids, mask = tokenize_probe(tokenizer, answer, protocol, style)
    return list(ids), [bool(m) for m in mask]


def kv_beliefs(model, ids: list[int], boundaries: list[int], probes: dict) -> dict[str, list[float]]:
    """v_0..v_K of every probe in ``probes`` ({name: (probe ids, score mask)}) with one forward over the history:
    each probe is run on a copy of the history's KV cache cropped to the boundary (= a separate pass per prefix)."""
    import torch
    from transformers import DynamicCache

    with torch.no_grad():
        history = DynamicCache(config=model.config)
        length = max(boundaries)
        out = model(input_ids=torch.tensor([ids[:length]]), cache=history, use_cache=True)
        history_logits = torch.log_softmax(out.logits[0].float(), -1)
        result = {name: [] for name in probes}
        for b in boundaries:
            for name, (probe, mask) in probes.items():
                cache = copy.deepcopy(history)
                if b < length:
                    cache.crop(b - length)  # transformers 5: a negative count of tokens to drop
                step = model(input_ids=torch.tensor([probe[:-1]]), cache=cache, use_cache=True)
                logp = torch.cat([history_logits[b - 1 : b], torch.log_softmax(step.logits[0].float(), -1)])
                picked = logp[torch.arange(len(probe)), torch.tensor(probe)]
                result[name].append(float(picked[torch.tensor(mask)].mean()))
    return result


def _play(env, index: int, queries: list[str]):
    """Search ``queries`` on question ``index``; returns (messages, [whether each search retrieved a gold passage])."""
    base = env.unwrapped
    base.reset(options={"question_index": index})
    gold = set(base.item.gold_passage_ids)
    hits, info = [], {}
    for query in queries:
        passages = base.retriever.search([query], base.topk)[0]
        hits.append(any(p.id in gold for p in passages))
        _, _, terminated, truncated, info = base.step(f"<search> {query} </search>")
        if terminated or truncated:
            raise RuntimeError(f"question {base.item.id}: episode ended at a search (max_turns={base.max_turns})")
    return info["messages"], hits


def _auc(labels: list[bool], scores: list[float]) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores)) if 0 < sum(labels) < len(labels) else float("nan")


def ig_signal(s: Settings, limit: int | None = None) -> None:
    """IG of the oracle's searches (each gold title) and of the question-as-query search, scored by zero-shot
    SmolLM2 after each search, for probe styles answer/official, old and new probe tokenisation, prob_diff and
    log_prob_diff; mean IG of gold-retrieving vs other searches and the ROC AUC of IG for telling them apart."""
    import numpy as np
    import torch

    from igpo_envs.information_gain import (
        InformationGainScorer,
        answer_logprobs,
        first_alias,
        information_gains,
        tokenize_history,
    )
    from igpo_trainer.offline_models import load_smollm2
    from igpo_trainer.trainer import make_env_from_id

    _check_prepared(s)
    torch.manual_seed(s.seed)
    model, tokenizer = load_smollm2()
    model.eval()
    env = make_env_from_id(ENV_ID, **{**s.env_kwargs("tag"), "max_turns": 8})
    items = env.unwrapped.items[:limit] if limit else env.unwrapped.items
    variants = {f"{style}/{fix}": (style, fn) for style in ("answer", "official")
                for fix, fn in (("before", old_tokenize_probe), ("after", new_tokenize_probe))}
    searches = []  # one row per search: agent, label, IG per variant and type
    belief_shift = {name: [] for name in variants}
    start = time.perf_counter()
    check = None
    for index, item in enumerate(items):
        answer = first_alias(item.golden_answers)
        probes = {name: fn(tokenizer, answer, "tag", style) for name, (style, fn) in variants.items()}
        for agent, queries in (("oracle", list(item.gold_titles)), ("question", [item.question])):
            messages, hits = _play(env, index, queries)
            ids, boundaries = tokenize_history(tokenizer, messages)
            # identical probe ids give identical beliefs: score each distinct probe once
            distinct = {}
            for name, probe in probes.items():
                distinct.setdefault((tuple(probe[0]), tuple(probe[1])), []).append(name)
            scored = kv_beliefs(model, ids, boundaries, {names[0]: probes[names[0]] for names in distinct.values()})
            beliefs = {name: scored[names[0]] for names in distinct.values() for name in names}
            if check is None:  # the KV-cache scoring equals the project's packed scorer and its public scorer
                packed = answer_logprobs(model, ids, boundaries, *probes["answer/after"]).tolist()
                public = InformationGainScorer(model, tokenizer, "tag", "answer").message_beliefs(messages, answer)
                check = {"max_abs_diff_vs_packed": max(abs(a - b) for a, b in zip(packed, beliefs["answer/after"])),
                         "max_abs_diff_vs_scorer": max(abs(a - b) for a, b in zip(public, beliefs["answer/after"]))}
            for name in variants:
                belief_shift[name].append(np.mean(np.abs(np.array(beliefs[name]) - np.array(beliefs[
                    name.split("/")[0] + "/after"]))))
            for k, hit in enumerate(hits):
                row = {"question": index, "agent": agent, "gold": bool(hit), "search": k + 1}
                for name in variants:
                    for kind in ("prob_diff", "log_prob_diff"):
                        row[f"{name}/{kind}"] = float(information_gains(beliefs[name], kind)[k])
                    row[f"{name}/beliefs"] = beliefs[name]
                searches.append(row)
        if (index + 1) % 5 == 0:
            print(f"  {index + 1}/{len(items)} questions, {time.perf_counter() - start:.0f} s", flush=True)
    labels = [r["gold"] for r in searches]
    table = []
    for name in variants:
        for kind in ("prob_diff", "log_prob_diff"):
            scores = [r[f"{name}/{kind}"] for r in searches]
            gold = [x for x, g in zip(scores, labels) if g]
            other = [x for x, g in zip(scores, labels) if not g]
            table.append({"probe": name.split("/")[0], "fix": name.split("/")[1], "ig": kind,
                          "mean_ig_gold": float(np.mean(gold)) if gold else float("nan"),
                          "mean_ig_other": float(np.mean(other)) if other else float("nan"),
                          "auc": _auc(labels, scores)})
    probe_changes = {
        style: sum(old_tokenize_probe(tokenizer, first_alias(i.golden_answers), "tag", style)
                   != new_tokenize_probe(tokenizer, first_alias(i.golden_answers), "tag", style) for i in items)
        for style in ("answer", "official")}
    _write("ig_signal", {
        "settings": asdict(s), "model": "SmolLM2-135M-Instruct (zero-shot) as the scorer", "questions": len(items),
        "searches": len(searches), "gold_searches": int(sum(labels)),
        "by_agent": {a: {"searches": sum(r["agent"] == a for r in searches),
                         "gold": sum(r["gold"] for r in searches if r["agent"] == a)} for a in ("oracle", "question")},
        "probes_changed_by_fix": probe_changes,
        "mean_abs_belief_shift_vs_after_nats": {k: float(np.mean(v)) for k, v in belief_shift.items()},
        "scoring_check": check, "seconds": time.perf_counter() - start, "table": table, "per_search": searches,
        "command": f"python benchmarks/real_model.py ig-signal{f' --limit {limit}' if limit else ''}"})


# ------------------------------------------------------------------------------------------------------ warm start
def warm_start_argv(s: Settings, num_examples: int, epochs: float, learning_rate: float, batch_size: int) -> list[str]:
    from igpo_trainer.offline_models import smollm2_dir

    return ["--model", str(smollm2_dir()), "--env", ENV_ID, "--out", str(s.sft_dir),
            "--env_kwargs", json.dumps({"corpus": str(s.corpus_file)}), "--protocol", "tag", "--topk", str(s.topk),
            "--max_turns", str(s.max_turns), "--train_questions", s.train_questions,
            "--num_examples", str(num_examples), "--epochs", str(epochs), "--learning_rate", str(learning_rate),
            "--warmup_steps", "1", "--batch_size", str(batch_size), "--seed", str(s.seed)]


def warm_start(s: Settings, num_examples: int, epochs: float, learning_rate: float, batch_size: int, *,
               skip_sft: bool = False, sft_only: bool = False, eval_episodes: int | None = None) -> None:
    """``igpo-warmstart`` on the train questions, then ``igpo-eval --transcript inline`` on the held-out ones."""
    from igpo_trainer.warmstart_cli import main as igpo_warmstart

    _check_prepared(s)
    argv = warm_start_argv(s, num_examples, epochs, learning_rate, batch_size)
    if not skip_sft:
        print("igpo-warmstart " + _quote(argv), flush=True)
        if igpo_warmstart(argv) != 0:
            raise SystemExit("igpo-warmstart failed")
        (s.sft_dir / "command.txt").write_text("igpo-warmstart " + _quote(argv), encoding="utf-8")
    if sft_only:
        return
    sft = json.loads((s.sft_dir / "warmstart.json").read_text())
    row = run_eval(s, str(s.sft_dir), "tag", "inline", "warm_start", eval_episodes)
    _write("warm_start", {"settings": asdict(s), "sft": sft, "sft_command": (s.sft_dir / "command.txt").read_text(),
                          "heldout": row})


# ----------------------------------------------------------------------------------------------------- train steps
def train_argv(s: Settings, out: Path, use_ig: bool) -> list[str]:
    return ["--model_name_or_path", str(s.sft_dir), "--env_id", ENV_ID,
            "--env_kwargs", json.dumps({"corpus": str(s.corpus_file)}), "--protocol", "tag", "--topk", str(s.topk),
            "--max_turns", "3", "--train_questions", s.train_questions, "--output_dir", str(out),
            "--use_information_gain", str(use_ig).lower(), "--num_generations", "4",
            "--per_device_train_batch_size", "4", "--max_completion_length", "320",
            "--max_turn_length", str(s.max_new_tokens), "--temperature", "1.0", "--top_k", "0",
            "--learning_rate", "1e-5", "--beta", "0.0", "--max_steps", "2", "--lr_scheduler_type", "constant",
            "--logging_steps", "1", "--save_strategy", "steps", "--save_steps", "2", "--save_only_model", "true",
            "--seed", str(s.seed), "--use_cpu", "true", "--bf16", "false", "--gradient_checkpointing", "false",
            "--report_to", "none", "--dtype", "float32", "--disable_tqdm", "true"]


def train_steps(s: Settings) -> None:
    """Two IGPO steps from the warm-started SmolLM2: loss, IG share of the step, seconds per step, weight change."""
    import torch
    from safetensors.torch import load_file

    from igpo_trainer.cli import main as igpo_train

    _check_prepared(s)
    if not (s.sft_dir / "model.safetensors").is_file():
        raise SystemExit(f"no warm-started model at {s.sft_dir}: run `python benchmarks/real_model.py warm-start`")
    out = Path(s.work) / "smollm2_igpo"
    argv = train_argv(s, out, use_ig=True)
    print("igpo-train " + _quote(argv), flush=True)
    start = time.perf_counter()
    if igpo_train(argv) != 0:
        raise SystemExit("igpo-train failed")
    seconds = time.perf_counter() - start
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    steps = [e for e in state["log_history"] if "loss" in e]
    before, after = load_file(s.sft_dir / "model.safetensors"), load_file(out / "checkpoint-2" / "model.safetensors")
    shared = [k for k in before if k in after]
    delta = math.sqrt(sum(float((after[k].float() - before[k].float()).pow(2).sum()) for k in shared))
    norm = math.sqrt(sum(float(before[k].float().pow(2).sum()) for k in shared))
    changed = sum(not torch.equal(before[k], after[k]) for k in shared)
    _write("train_steps", {
        "settings": asdict(s), "command": "igpo-train " + _quote(argv), "steps": steps,
        "wall_seconds": seconds,
        "seconds_per_step": [e.get("step_time") for e in steps],
        "losses_finite": all(math.isfinite(e["loss"]) for e in steps),
        "weights_changed_tensors": f"{changed}/{len(shared)}", "relative_weight_change": delta / norm})


# ---------------------------------------------------------------------------------------------------------- report
def _pct(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _zero_shot_on(zs: dict, question_ids: list[str]) -> list[dict]:
    """The zero-shot rows re-summarised over ``question_ids`` only (when the warm-started model played fewer)."""
    from igpo_envs.evaluation import summarize

    rows = []
    for r in zs["rows"]:
        path = Path(zs["settings"]["work"]) / f"eval_zero_shot_{r['protocol']}.json"
        records = [e for e in json.loads(path.read_text())["results"][0]["per_episode"]
                   if e["question_id"] in set(question_ids)]
        errors = Counter((e["error"] or "").split(":")[0] for e in records if e["error"])
        rows.append({**r, **summarize(records), "top_errors": errors.most_common(3)})
    return rows


def report() -> str:
    lines = []
    zs, ws = _read("zero_shot"), _read("warm_start")
    played = Path(zs["settings"]["work"]) / "eval_zero_shot_tag.json" if zs else None
    if (zs and ws and played.is_file()  # the per-episode records live with the runs (--work)
            and len(ws["heldout"]["question_ids"]) < min(r["episodes"] for r in zs["rows"])):
        zs = {**zs, "rows": _zero_shot_on(zs, ws["heldout"]["question_ids"])}
    if zs or ws:
        lines += ["| policy | protocol | EM | F1 | gold recall | format errors | searches/ep | commonest error |",
                  "|---|---|---:|---:|---:|---:|---:|---|"]
        for label, rows in (("zero-shot", (zs or {}).get("rows", [])), ("warm-started", [ws["heldout"]] if ws else [])):
            for r in rows:
                err = r["top_errors"][0][0] if r["top_errors"] else "-"
                lines.append(f"| {label} | {r['protocol']} | {_pct(r['em'])} | {_pct(r['f1'])} | "
                             f"{_pct(r['gold_recall'])} | {_pct(r['format_error_rate'])} | {r['searches']:.2f} | "
                             f"`{err}` |")
        lines.append("")
    if ws:
        sft = ws["sft"]
        lines.append(f"Warm start: {sft['examples']} oracle demonstrations (demo EM {_pct(sft['demo_em'])}, "
                     f"gold recall {_pct(sft['demo_gold_recall'])}, {sft['demo_tokens_mean']:.0f} tokens on average), "
                     f"train loss {sft['train_loss']:.3f}, {sft['seconds']:.0f} s.")
        lines.append("")
    ig = _read("ig_signal")
    if ig:
        lines += [f"{ig['questions']} held-out questions, {ig['searches']} searches ({ig['gold_searches']} retrieved a "
                  f"gold paragraph); probes changed by the fix: {ig['probes_changed_by_fix']}.", "",
                  "| probe | tokenisation | IG | mean IG, gold searches | mean IG, other searches | ROC AUC |",
                  "|---|---|---|---:|---:|---:|"]
        for r in ig["table"]:
            lines.append(f"| {r['probe']} | {r['fix']} the fix | {r['ig']} | {r['mean_ig_gold']:+.4f} | "
                         f"{r['mean_ig_other']:+.4f} | {r['auc']:.3f} |")
        lines.append("")
    ts = _read("train_steps")
    if ts:
        lines += ["| step | loss | grad norm | s/step | IG share of step | reward (F1) | IG/search | searches/ep | "
                  "gold recall | zero-adv groups, IGPO | outcome-only zero-std groups |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for e in ts["steps"]:
            lines.append(f"| {e.get('step')} | {e['loss']:+.4f} | {e.get('grad_norm', float('nan')):.2f} | "
                         f"{e.get('step_time', float('nan')):.0f} | {e.get('igpo/ig_time_share', float('nan')):.3f} | "
                         f"{e.get('reward', float('nan')):.3f} | "
                         f"{e.get('igpo/info_gain_per_search', float('nan')):+.4f} | "
                         f"{e.get('igpo/searches', float('nan')):.2f} | {_pct(e.get('igpo/gold_recall'))} | "
                         f"{e.get('igpo/zero_adv_group_frac', float('nan')):.2f} | "
                         f"{e.get('frac_reward_zero_std', float('nan')):.2f} |")
        lines.append(f"\nLosses finite: {ts['losses_finite']}; weights changed: {ts['weights_changed_tensors']} "
                     f"tensors, relative L2 change {ts['relative_weight_change']:.2e}; wall time of the command "
                     f"{ts['wall_seconds']:.0f} s (model loading included).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=["prepare", "zero-shot", "ig-signal", "warm-start", "train-steps", "report"])
    parser.add_argument("--work", default=Settings.work, help="directory for data files, models and checkpoints")
    parser.add_argument("--limit", type=int, default=None, help="ig-signal: first N held-out questions only")
    parser.add_argument("--num-examples", type=int, default=40, help="warm-start: demonstrations")
    parser.add_argument("--sft-batch-size", type=int, default=4, help="warm-start: demonstrations per step")
    parser.add_argument("--sft-only", action="store_true", help="warm-start: train only (evaluate later)")
    parser.add_argument("--eval-episodes", type=int, default=None, help="warm-start: held-out episodes (default all)")
    parser.add_argument("--epochs", type=float, default=1.0, help="warm-start: SFT epochs")
    parser.add_argument("--learning-rate", type=float, default=3e-4, help="warm-start: peak learning rate")
    parser.add_argument("--skip-sft", action="store_true", help="warm-start: evaluate an existing SFT model only")
    args = parser.parse_args(argv)
    s = Settings(work=args.work)
    if args.step == "prepare":
        prepare(s)
    elif args.step == "zero-shot":
        zero_shot(s)
    elif args.step == "ig-signal":
        ig_signal(s, args.limit)
    elif args.step == "warm-start":
        warm_start(s, args.num_examples, args.epochs, args.learning_rate, args.sft_batch_size,
                   skip_sft=args.skip_sft, sft_only=args.sft_only, eval_episodes=args.eval_episodes)
    elif args.step == "train-steps":
        train_steps(s)
    else:
        print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
