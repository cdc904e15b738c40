"""The igpo-demo pipeline in miniature (tiny world, tiny model, 2 RL steps per method), its warm-start rendering, and
the learning benchmark's aggregation."""

import json
import math
import os

import pytest

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    from igpo_trainer.demo import QUICK, run_demo

    out = tmp_path_factory.mktemp("demo")
    report = run_demo(out, settings=QUICK, seed=0, progress=False, workers=2)  # RL runs in two spawned processes
    return out, report


def _finite(x):
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def test_demo_writes_table_json_and_plot(demo_out):
    out, _ = demo_out
    for name in ("results.md", "results.json", "curves.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "results.md").read_text()
    for policy in ("SFT start", "IGPO", "GRPO"):
        assert f"| {policy} |" in table
    assert "| IGPO | 2 | " in table and " ± " in table  # two RL seeds: mean ± std
    saved = json.loads((out / "results.json").read_text())
    assert [r["policy"] for r in saved["rows"]] == ["SFT start", "IGPO", "GRPO"]
    for row in saved["rows"]:
        for key in ("em", "f1", "searches", "format_error_rate", "seconds"):
            assert _finite(row[key]), (row["policy"], key, row[key])
    # Every RL seed of every method has its own row, trained from the one warm start for the same number of steps.
    assert sorted((r["policy"], r["seed"]) for r in saved["seed_rows"]) == [("GRPO", 0), ("GRPO", 1), ("IGPO", 0),
                                                                          ("IGPO", 1)]
    for name in ("IGPO", "GRPO"):
        per_seed = [r for r in saved["seed_rows"] if r["policy"] == name]
        mean = next(r for r in saved["rows"] if r["policy"] == name)
        assert mean["em"] == pytest.approx(sum(r["em"] for r in per_seed) / 2)
        assert len(saved["train_logs"][name]) == 2
        for logs, curve in zip(saved["train_logs"][name], saved["curves"][name]):
            assert [h["step"] for h in logs] == [1, 2]
            assert all(_finite(h["reward"]) and _finite(h["igpo/zero_adv_group_frac"]) for h in logs)
            assert [c["step"] for c in curve] == [1, 2]  # held-out evaluation during training
    assert isinstance(saved["conclusions"]["igpo_em_ge_grpo_every_seed"], bool)
    assert len(saved["conclusions"]["igpo_em_minus_grpo_per_seed"]) == 2
    assert saved["numerics"]["torch_cpu_capability"]


def test_rl_runs_in_worker_processes_equal_a_run_in_this_one(demo_out):
    """The RL runs are seeded and independent: one run here, in this process, gives the row the worker process gave
    (what makes `--workers` a speed setting only); and the CPU budget adds the serial stages to the RL runs scheduled
    over the workers."""
    from igpo_trainer.demo import QUICK, critical_path, run_rl_jobs

    out, report = demo_out
    (here,) = run_rl_jobs([("IGPO", 1)], out / "sft", out / "again", QUICK, report["held_out_questions"], workers=1,
                          progress=False, say=lambda _: None)
    there = next(r for r in report["seed_rows"] if (r["policy"], r["seed"]) == ("IGPO", 1))
    for key in ("em", "f1", "gold_recall", "searches", "zero_adv_group_frac"):
        assert here["row"][key] == pytest.approx(there[key], abs=1e-12), key
    budget = report["cpu_budget"]
    assert budget["workers"] == 2 and len(budget["rl_run_cpu_seconds"]) == 4
    assert budget["serial_cpu_seconds"] < budget["critical_path_cpu_seconds"] < budget["serial_cpu_seconds"] + sum(
        budget["rl_run_cpu_seconds"])
    assert budget["serial_wall_seconds"] < budget["critical_path_seconds"] and budget["sft_threads"] == 1
    assert critical_path({"sft": 10.0, "rl_main_process": 99.0}, [4.0, 3.0, 2.0, 2.0], workers=2) == 10.0 + 6.0
    assert critical_path({"sft": 10.0}, [4.0, 3.0], workers=1) == 17.0


def test_demo_sft_start_speaks_the_protocol(demo_out):
    """The warm start must search or answer in the protocol at least sometimes, or RL has nothing to work with."""
    _, report = demo_out
    d = report["diagnostics"]
    assert d["share_format_error"] < 1.0 and d["searches"] > 0.0, d
    assert 0.0 <= d["zero_adv_frac_grpo"] <= 1.0 and 0.0 <= d["zero_adv_frac_igpo"] <= d["zero_adv_frac_grpo"]
    sft = report["sft"]
    assert sft["examples"] > 0 and math.isfinite(sft["train_loss"])
    # The warm start reports its criterion and every held-out check; the last check is where it stopped.
    assert sft["checks"] and sft["checks"][-1]["step"] == sft["steps"]
    met_at = sft["anneal"]["from_step"] if sft["anneal"] else sft["steps"]
    assert sft["converged"] == any(c["met"] for c in sft["checks"] if c["step"] == met_at)
    assert set(sft["criterion"]) >= {"min_validity", "min_copy_accuracy", "min_query_copy", "max_epochs"}


def test_reading_figures_and_criterion():
    from igpo_trainer.warmstart import ConvergenceCriterion, criterion_met, reading_figures

    def record(em, recall, error=None):
        return {"em": em, "gold_recall": recall, "error": error, "truncated": False}

    records = [record(1.0, 1.0), record(0.0, 1.0), record(0.0, 0.5), record(0.0, 0.0, "no answer tag")]
    figures = reading_figures(records, num_gold=2)
    assert figures["validity"] == 0.75
    assert figures["copy_accuracy"] == 0.5  # EM among the two episodes that retrieved every gold passage
    assert figures["query_copy"] == pytest.approx(2 / 3)  # of three that found a gold passage, two found both
    assert not criterion_met(figures, ConvergenceCriterion())
    assert criterion_met(figures, ConvergenceCriterion(min_validity=0.7, min_copy_accuracy=0.5, min_query_copy=0.6))
    nothing_found = reading_figures([record(0.0, 0.0)], num_gold=2)
    assert math.isnan(nothing_found["copy_accuracy"]) and not criterion_met(nothing_found, ConvergenceCriterion(
        min_validity=0.0, min_copy_accuracy=0.0, min_query_copy=0.0))  # no evidence: copying was never measured
    lenient = ConvergenceCriterion(min_validity=0.7, min_copy_accuracy=0.5, min_query_copy=0.6, min_opening_share=0.05)
    assert not criterion_met(figures, lenient)  # an opening share is required and was not measured
    assert not criterion_met({**figures, "opening_share": 0.02}, lenient)
    assert criterion_met({**figures, "opening_share": 0.08}, lenient)


def test_opening_word_probability_is_the_policy_s_chance_of_that_query(tiny_start):
    """The mean probability of the oracle query's first word at the opening, computed as the rollout renders the
    episode: equal to the model's next-token probability after the prompt and the opening tag (one-token words)."""
    import torch
    from transformers import AutoModelForCausalLM

    from igpo_envs.hf_tokenizer import load_tokenizer
    from igpo_envs.transcript import prompt_ids
    from igpo_trainer.warmstart import opening_word_probability

    path, env = tiny_start
    model, tokenizer = AutoModelForCausalLM.from_pretrained(path).eval(), load_tokenizer(path)
    items = env.unwrapped.items[:3]
    prompts = [env.unwrapped.reset(options={"question_index": i})[0] for i in range(3)]
    actions = [f"<search> {item.metadata['oracle_queries'][0]} </search>" for item in items]
    expected = []
    for prompt, action in zip(prompts, actions):
        search, word = tokenizer(action, add_special_tokens=False)["input_ids"][:2]
        with torch.no_grad():
            logits = model(torch.tensor([prompt_ids(tokenizer, prompt) + [search]])).logits[0, -1]
        expected.append(logits.softmax(-1)[word].item())
    got = opening_word_probability(model, tokenizer, prompts, actions)
    assert 0.0 < got < 1.0 and got == pytest.approx(sum(expected) / 3, rel=1e-5)


@pytest.fixture(scope="module")
def tiny_start(tmp_path_factory):
    from igpo_trainer.demo import QUICK, build_model, make_train_env

    return build_model(tmp_path_factory.mktemp("tiny"), QUICK, seed=0), make_train_env(QUICK)


@pytest.mark.parametrize("perfect", [True, False])
def test_warm_start_trains_until_its_criterion_or_the_cap(tiny_start, tmp_path, perfect):
    """Stops at the first check that meets the criterion; without one, trains to the cap and says it did not
    converge."""
    from igpo_trainer.warmstart import ConvergenceCriterion, warm_start

    base, env = tiny_start
    calls = []

    def evaluate(model):
        calls.append(model.training)
        return [{"em": float(perfect), "gold_recall": 1.0, "error": None, "truncated": False}] * 4

    criterion = ConvergenceCriterion(check_every=2, max_epochs=2.0)
    info = warm_start(base, env, tmp_path / "sft", num_examples=16, batch_size=8, learning_rate=1e-3, seed=0,
                      progress=False, evaluate=evaluate, criterion=criterion)
    assert calls and not any(calls)  # evaluated in eval mode
    if perfect:
        assert info["converged"] and info["steps"] == 2 and len(info["checks"]) == 1
    else:
        assert not info["converged"] and info["steps"] == 4  # 16 examples / 8 per step x 2 epochs
        assert [c["step"] for c in info["checks"]] == [2, 4]
    assert (tmp_path / "sft" / "config.json").is_file()


def test_warm_start_anneals_once_its_criterion_holds(tiny_start, tmp_path):
    """With ``anneal_steps``, meeting the criterion starts a linear decay of the learning rate to zero over that many
    more optimizer steps (measured at every optimizer step), then one more check, then the stop."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from igpo_trainer.warmstart import ConvergenceCriterion, annealed_learning_rate, warm_start

    base, env = tiny_start
    rates = []
    hook = register_optimizer_step_pre_hook(lambda optimizer, *_: rates.append(optimizer.param_groups[0]["lr"]))
    try:
        info = warm_start(base, env, tmp_path / "sft", num_examples=16, batch_size=8, learning_rate=1e-3, seed=0,
                          progress=False, evaluate=lambda model: [{"em": 1.0, "gold_recall": 1.0, "error": None,
                                                                   "truncated": False}] * 4,
                          criterion=ConvergenceCriterion(check_every=2, max_epochs=8.0), anneal_steps=3)
    finally:
        hook.remove()
    start = info["anneal"]["learning_rate"]
    assert info["converged"] and info["anneal"] == {"from_step": 2, "learning_rate": start, "steps": 3}
    assert info["steps"] == 5 and [c["step"] for c in info["checks"]] == [2, 5]
    assert 0 < start < 1e-3 and len(rates) == 5  # still warming up (10 steps) when the criterion held
    assert rates[2:] == pytest.approx([start, start * 2 / 3, start / 3])
    assert annealed_learning_rate(1.0, 3, 3) == 0.0 and annealed_learning_rate(2.0, 5, 3) == 0.0


def test_warm_start_weights_do_not_depend_on_torch_threads(tiny_start, tmp_path):
    """What lets `igpo-demo --sft-threads 2` speed up the serial stage without moving any figure: the same warm start
    on one and on two torch threads ends with bit-identical weights."""
    import torch
    from transformers import AutoModelForCausalLM

    from igpo_trainer.warmstart import warm_start

    base, env = tiny_start
    weights = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        try:
            warm_start(base, env, tmp_path / f"t{threads}", num_examples=16, batch_size=8, learning_rate=1e-2,
                       epochs=2.0, seed=0, progress=False)
        finally:
            torch.set_num_threads(1)
        model = AutoModelForCausalLM.from_pretrained(tmp_path / f"t{threads}")
        weights.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*weights, strict=True))
    assert not all(torch.equal(a, b.detach()) for a, b in zip(
        weights[0], AutoModelForCausalLM.from_pretrained(base).parameters(), strict=True))  # it did train


def test_oracle_opening_plays_the_first_search_then_the_policy():
    from igpo_trainer.demo import OracleOpening

    class Policy:
        def act_batch(self, observations, infos):
            return [f"<answer> {info['question_id']} </answer>" for info in infos]

    agent = OracleOpening(Policy(), {"q1": "Kesh Dalo Miru", "q2": "Romo Zutu Vela"})
    infos = [{"question_id": "q1", "turn": 0}, {"question_id": "q2", "turn": 1}, {"question_id": "q2", "turn": 0}]
    assert agent.act_batch(["", "", ""], infos) == ["<search> Kesh Dalo Miru </search>", "<answer> q2 </answer>",
                                                   "<search> Romo Zutu Vela </search>"]


def test_seed_summary_and_conclusions():
    from igpo_trainer.demo import conclusions, results_table, seed_summary

    rows = [{"policy": p, "seed": s, "em": em, "f1": em, "searches": 2.0, "gold_recall": 0.9, "format_error_rate": 0.0,
             "turns": 3.0, "seconds": 10.0, "zero_adv_group_frac": z}
            for p, z, ems in (("IGPO", 0.0, (0.5, 0.4, 0.6)), ("GRPO", 0.5, (0.3, 0.4, 0.2)))
            for s, em in enumerate(ems)]
    igpo = seed_summary("IGPO", [r for r in rows if r["policy"] == "IGPO"])
    assert igpo["seeds"] == 3 and igpo["em"] == pytest.approx(0.5) and igpo["em_std"] == pytest.approx(0.0816, abs=1e-3)
    assert "| IGPO | 3 | 50.0 ± 8.2 |" in results_table([igpo])
    c = conclusions(rows)
    assert c["igpo_em_ge_grpo_every_seed"] and c["igpo_em_minus_grpo_per_seed"] == pytest.approx([0.2, 0.0, 0.4])
    assert c["zero_adv_groups_grpo"] == 0.5 and c["zero_adv_groups_igpo"] == 0.0
    rows[1]["em"] = 0.3  # IGPO seed 1 below GRPO seed 1
    assert not conclusions(rows)["igpo_em_ge_grpo_every_seed"]


def test_demo_cli_rejects_bad_counts():
    from igpo_trainer.demo import main

    for flag, bad in (("--seeds", "0"), ("--steps", "0"), ("--anneal-steps", "-1"), ("--sft-threads", "0")):
        with pytest.raises(SystemExit):
            main([flag, bad, "--quick"])


def test_warmstart_renders_trajectories_like_rollouts():
    """A scripted trajectory's tokens equal what run_episodes builds for the same turns; loss only on policy turns."""
    import tempfile

    from igpo_envs.hf_tokenizer import load_tokenizer
    from igpo_trainer.demo import QUICK, build_model, make_train_env
    from igpo_trainer.rollout import run_episodes
    from igpo_trainer.warmstart import render_trajectory, script_trajectory

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = load_tokenizer(build_model(tmp, QUICK, seed=0))
    env = make_train_env(QUICK)
    prompt, turns, info = script_trajectory(env, 0, "oracle")
    assert info["em"] == 1.0 and info["gold_recall"] == 1.0
    rendered = render_trajectory(tokenizer, prompt, turns)

    class Scripted:  # replays the scripted actions as the policy's turns
        def __init__(self):
            self.turn = 0

        def __call__(self, contexts, max_new_tokens):
            ids = tokenizer(turns[self.turn][0], add_special_tokens=False)["input_ids"]
            self.turn += 1
            return [(ids, None) for _ in contexts]

    (episode,) = run_episodes([env.unwrapped.spawn()], [0], Scripted(), tokenizer=tokenizer,
                              max_turns=QUICK.max_turns, max_turn_length=64, max_completion_length=4096,
                              eos_token_id=tokenizer.eos_token_id)
    assert rendered["input_ids"] == episode.prompt_ids + episode.completion_ids
    assert rendered["completion_mask"][len(episode.prompt_ids):-1] == episode.env_mask[:-1]
    assert sum(rendered["completion_mask"][: len(episode.prompt_ids)]) == 0  # the prompt is never trained on


def test_reading_plan_teaches_copying_not_the_choice_of_opening():
    """A `reading` demonstration plays the oracle plan but keeps the choice of its opening query (the query's first
    word) out of the loss: the rest of the alias, the later searches and the answer (names copied) are taught."""
    import tempfile

    from igpo_envs.hf_tokenizer import load_tokenizer
    from igpo_trainer.demo import QUICK, build_model, make_train_env
    from igpo_trainer.warmstart import demonstrations, render_trajectory, script_trajectory

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = load_tokenizer(build_model(tmp, QUICK, seed=0))
    env = make_train_env(QUICK)
    prompt, turns, info = script_trajectory(env, 0, "reading")
    assert info["em"] == 1.0 and len(turns) == 3
    taught = render_trajectory(tokenizer, prompt, turns, hide_opening_choice=True)
    full = render_trajectory(tokenizer, prompt, turns)
    assert taught["input_ids"] == full["input_ids"]

    def loss_words(row):
        return tokenizer.decode([i for i, m in zip(row["input_ids"], row["completion_mask"]) if m]).split()

    alias = env.unwrapped.items[0].metadata["oracle_queries"][0].split()
    assert len(alias) == 3 and loss_words(full)[:5] == ["<search>", *alias, "</search>"]
    assert loss_words(taught) == loss_words(full)[:1] + loss_words(full)[2:]  # only the alias's first word is hidden
    rows, stats = demonstrations(env, tokenizer, 200, naive_share=0.9, recover_share=0.0, reading_share=0.5, seed=1)
    assert 0.4 < stats["share_reading"] < 0.6 and stats["share_naive_read"] > 0.35
    with pytest.raises(ValueError, match="reading_share"):
        demonstrations(env, tokenizer, 2, reading_share=1.5)


def test_naive_read_plan_reads_consistently():
    """The naive plan answers what the retrieved passages state: right exactly when its query found the evidence."""
    from igpo_trainer.demo import ENV_ID, QUICK
    from igpo_trainer.trainer import make_env_from_id
    from igpo_trainer.warmstart import script_trajectory

    # Random relation chains: the naive query finds the evidence for some of them (never for the demo's own chain).
    env = make_env_from_id(ENV_ID, **{**QUICK.env_kwargs("train"), "paths": None})
    outcomes = []
    for i in range(20):
        _, turns, info = script_trajectory(env, i, "naive_read")
        assert turns[0][0] == f"<search> {env.unwrapped.items[i].question} </search>"
        assert turns[-1][1] is None and turns[-1][0].startswith("<answer>")
        if info["gold_recall"] == 1.0:
            outcomes.append(info["em"])
    assert outcomes and sum(outcomes) / len(outcomes) > 0.9
    with pytest.raises(ValueError, match="unknown plan"):
        script_trajectory(env, 0, "clever")


def test_learning_curve_aggregates_seed_bands(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "learning_curve", os.path.join(os.path.dirname(__file__), "..", "benchmarks", "learning_curve.py"))
    lc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lc)
    results = []
    for method, finals in (("grpo", [0.2, 0.3]), ("igpo", [0.4, 0.5]), ("grpo_em", [0.6, 0.6]),
                           ("igpo_em", [0.4, 0.5])):
        for seed, final in enumerate(finals):
            curve = [{"step": s, "seconds": s * 1.0, "em": final * s / 4, "f1": final, "searches": 2.0,
                      "gold_recall": 0.5, "format_error_rate": 0.0} for s in (2, 4)]
            results.append({"method": method, "seed": seed, "steps": 4, "seconds": 4.0, "seconds_per_step": 1.0,
                            "curve": curve, "train": [{"step": 1, "igpo/zero_adv_group_frac": 0.5}]})
    summary = {s["method"]: s for s in lc.summarize(results, {"em": 0.0, "f1": 0.0})}
    assert summary["grpo"]["final_em"] == pytest.approx(0.25)
    assert summary["grpo"]["final_em_std"] == pytest.approx(0.05)
    assert summary["igpo"]["steps_to_grpo_final"] == 2  # F1 (the benchmark score) 0.4 >= grpo final 0.25 at step 2
    # Each IGPO variant is compared with the GRPO run of the same outcome reward: igpo_em (F1 0.45) never reaches
    # grpo_em's 0.6, although it would reach plain grpo's 0.25 at step 2.
    assert summary["igpo_em"]["steps_to_grpo_final"] == ""
    assert lc.reference_of("igpo_em") == lc.reference_of("igpo_em_std_floor") == "grpo_em"
    assert lc.reference_of("igpo_separate") == "grpo"
    assert "| grpo_em | 2 |" in lc.summary_table(list(summary.values()))
    lc.plot(results, {"em": 0.0, "f1": 0.0}, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 0


def test_opening_choice_with_real_bpe_tokenizers(real_tokenizer, real_vocab_model_dir):
    """With Qwen2.5's and SmolLM2's byte-level BPE (where the word's leading space merges into its first token and a
    name splits into several tokens), the hidden opening choice is exactly the tokens of the query's first word, and
    its probability is the product of the model's next-token probabilities over those tokens."""
    import torch
    from transformers import AutoModelForCausalLM

    from igpo_envs.transcript import prompt_ids
    from igpo_trainer.warmstart import opening_choice, opening_word_probability, render_trajectory

    tokenizer = real_tokenizer
    prompt = "Question: Where was the director of Neriwal Dobe Naki born?"
    opening = "<search> Neriwal Dobe Naki </search>"
    turns = [(opening, "Doc 1 (Title: Numo Zakir) Numo Zakir was directed by Loku Rugi."),
             ("<answer> Dike Gebe </answer>", None)]
    ids, choice = opening_choice(tokenizer, opening)
    assert tokenizer.decode([ids[k] for k in choice]).strip() == "Neriwal"
    hidden, full = (render_trajectory(tokenizer, prompt, turns, hide_opening_choice=h) for h in (True, False))
    assert hidden["input_ids"] == full["input_ids"]
    dropped = [i for i, (h, f) in enumerate(zip(hidden["completion_mask"], full["completion_mask"])) if h != f]
    assert tokenizer.decode([full["input_ids"][i] for i in dropped]).strip() == "Neriwal"

    model = AutoModelForCausalLM.from_pretrained(real_vocab_model_dir).eval()
    context, expected = prompt_ids(tokenizer, prompt) + ids[: choice[0]], 1.0
    for k in choice:  # one forward pass per token: independent of the batched computation
        with torch.no_grad():
            expected *= model(torch.tensor([context])).logits[0, -1].softmax(-1)[ids[k]].item()
        context = context + [ids[k]]
    assert opening_word_probability(model, tokenizer, [prompt], [opening]) == pytest.approx(expected, rel=1e-4)


def test_demo_ranges_runs_argument():
    """`demo_ranges.py --runs` takes capability:seed pairs (else every capability with every seed) and names a bad
    pair."""
    import importlib.util
    from types import SimpleNamespace

    spec = importlib.util.spec_from_file_location(
        "demo_ranges", os.path.join(os.path.dirname(__file__), "..", "benchmarks", "demo_ranges.py"))
    demo_ranges = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo_ranges)
    chosen = demo_ranges.chosen_runs
    assert chosen(SimpleNamespace(runs="avx2:0, avx512:1", capabilities=[], seeds=[])) == [("avx2", 0), ("avx512", 1)]
    assert chosen(SimpleNamespace(runs=None, capabilities=["avx2", "default"], seeds=[0, 1])) == [
        ("avx2", 0), ("default", 0), ("avx2", 1), ("default", 1)]
    with pytest.raises(SystemExit, match="capability:seed pairs like avx2:0, got 'avx2'"):
        chosen(SimpleNamespace(runs="avx2", capabilities=[], seeds=[]))
