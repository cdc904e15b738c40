"""IGPOTrainer: rollout token bookkeeping, (B, T) advantages, IG-off = GRPO, end-to-end CPU steps, resume."""

import math
import os

import pytest
import torch

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from conftest import KeywordRetriever

from igpo_envs.env import SearchQAEnv
from igpo_envs.protocol import format_observation, render_prompt
from igpo_envs.types import Passage, QAItem
from igpo_trainer import IGPOConfig, IGPOTrainer
from igpo_trainer.advantages import turn_advantages
from igpo_trainer.rollout import (
    assign_turn_rewards,
    broadcast_turn_advantages,
    encode_prompt,
    observation_text,
    run_episodes,
)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one intra-op thread; on a shared 2-core machine two spinning OpenMP threads made
    these steps ~50x slower. Restored after the module so other test files keep their setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

N_QUESTIONS = 10


PASSAGES = [Passage(f"d{i}", f"Film {i}", f"Film {i} was directed by Person {i}.") for i in range(N_QUESTIONS)]
ITEMS = [
    QAItem(f"q{i}", f"Who directed Film {i}?", (f"Person {i}",), gold_passage_ids=(f"d{i}",))
    for i in range(N_QUESTIONS)
]


def make_world_env(**kwargs):
    settings = {"max_turns": 3, "topk": 2, **kwargs}
    return SearchQAEnv(questions=ITEMS, retriever=KeywordRetriever(PASSAGES), **settings)


def oracle_completion(i: int) -> str:
    """Odd questions: search then answer; even ones: answer at once (so groups mix 1- and 2-turn episodes)."""
    if i % 2:
        passages = KeywordRetriever(PASSAGES).search([f"Film {i}"], 2)[0]
        return f"<search> Film {i} </search>" + observation_text(format_observation(passages, "tag")) + (
            f"<answer> Person {i} </answer>"
        )
    return f"<answer> Person {i} </answer>"


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A tiny Qwen2 that has seen a few oracle episodes (a couple of seconds of SFT), so rollouts mix right answers,
    wrong answers, searches and format errors: groups with non-zero advantages."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from igpo_trainer.tiny import build_tiny_model

    out = tmp_path_factory.mktemp("tiny_igpo")
    texts = [render_prompt(it.question) for it in ITEMS] + [oracle_completion(i) for i in range(N_QUESTIONS)]
    build_tiny_model(out, texts, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, vocab_size=400, seed=0)
    tokenizer, model = AutoTokenizer.from_pretrained(out), AutoModelForCausalLM.from_pretrained(out)
    seqs = [
        encode_prompt(tokenizer, render_prompt(it.question))
        + tokenizer(oracle_completion(i), add_special_tokens=False)["input_ids"]
        + [tokenizer.eos_token_id]
        for i, it in enumerate(ITEMS)
    ]
    sft(model, tokenizer, seqs, steps=60)
    model.save_pretrained(out)
    return out


SYNTH = {"num_docs": 60, "hops": 1, "num_questions": 8, "seed": 0}


@pytest.fixture(scope="module")
def synth_model_dir(tmp_path_factory):
    """A tiny Qwen2 warm-started (seconds of SFT) on oracle episodes of igpo/SynthMultiHop-v0: mostly search then
    answer, some answer at once, so its own rollouts mix searches, answers and format errors."""
    import gymnasium as gym
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import igpo_envs  # noqa: F401
    from igpo_trainer.cli import build_tiny_for_env

    env = gym.make("igpo/SynthMultiHop-v0", topk=1, max_turns=3, **SYNTH).unwrapped
    out = tmp_path_factory.mktemp("tiny_synth")
    build_tiny_for_env(env, str(out), hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, vocab_size=600)
    tokenizer, model = AutoTokenizer.from_pretrained(out), AutoModelForCausalLM.from_pretrained(out)
    seqs = []
    for i, item in enumerate(env.items):
        prompt, _ = env.reset(options={"question_index": i})
        completion = ""
        if i % 4 != 3:
            for query in item.metadata["oracle_queries"]:
                action = f"<search> {query} </search>"
                observation, *_ = env.step(action)
                completion += action + observation_text(observation)
        completion += f"<answer> {item.golden_answers[0]} </answer>"
        ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
        seqs.append(encode_prompt(tokenizer, prompt) + ids + [tokenizer.eos_token_id])
    sft(model, tokenizer, seqs, steps=60)
    model.save_pretrained(out)
    return out


def sft(model, tokenizer, seqs, steps, lr=1e-2):
    """A few full-batch causal-LM steps: just enough for a tiny model to speak the protocol."""
    torch.manual_seed(0)
    width = max(map(len, seqs))
    ids = torch.tensor([s + [tokenizer.pad_token_id] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    labels = ids.masked_fill(mask == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    for _ in range(steps):
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def make_config(tmp_path, **overrides):
    settings = dict(
        output_dir=str(tmp_path / "run"),
        use_cpu=True,
        bf16=False,
        report_to="none",
        gradient_checkpointing=False,
        per_device_train_batch_size=8,  # 2 prompts x G=4
        num_generations=4,
        max_steps=2,
        max_completion_length=96,
        max_turn_length=24,
        max_turns=3,
        logging_steps=1,
        learning_rate=1e-3,
        lr_scheduler_type="constant",  # an interrupted run and a full run follow the same schedule
        save_strategy="no",
        seed=0,
    )
    settings.update(overrides)
    return IGPOConfig(**settings)


def capture_generations(trainer):
    """Record (rows, output) of every rollout batch, before TRL shuffles and splits it."""
    captured = []
    original = trainer._generate_and_score_completions

    def wrapped(inputs):
        output = original(inputs)
        captured.append(([dict(row) for row in inputs], {k: v for k, v in output.items()}))
        return output

    trainer._generate_and_score_completions = wrapped
    return captured


# ---------------------------------------------------------------------------------------------------------------------
# Rollout bookkeeping on a constructed episode (scripted policy, real env)
# ---------------------------------------------------------------------------------------------------------------------
class ScriptedPolicy:
    """A TurnGenerator that writes fixed turns: turn t of every rollout is ``turns[t]``."""

    def __init__(self, tokenizer, turns):
        self.tokenizer, self.turns, self.calls, self.turn = tokenizer, turns, [], 0

    def __call__(self, contexts, max_new_tokens):
        self.calls.append(len(contexts))
        ids = self.tokenizer(self.turns[self.turn], add_special_tokens=False)["input_ids"]
        self.turn += 1
        return [(ids[:max_new_tokens], None) for _ in contexts]


def test_constructed_rollout_masks_observations_and_broadcasts_turn_advantages(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    envs = [make_world_env() for _ in range(2)]
    policy = ScriptedPolicy(tokenizer, ["<search> Film 3 </search>", "<answer> Person 3 </answer>"])
    episodes = run_episodes(
        envs, [3, 5], policy, tokenizer=tokenizer, max_turns=3, max_turn_length=24,
        max_completion_length=400, eos_token_id=tokenizer.eos_token_id,
    )
    assert policy.calls == [2, 2]  # one batched generation call per turn for all live rollouts
    search_ids = tokenizer("<search> Film 3 </search>", add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer("<answer> Person 3 </answer>", add_special_tokens=False)["input_ids"]
    for episode, index in zip(episodes, [3, 5]):
        passages = KeywordRetriever(PASSAGES).search(["Film 3"], 2)[0]
        observation = observation_text(format_observation(passages, "tag"))
        obs_ids = tokenizer(observation, add_special_tokens=False)["input_ids"]
        assert episode.completion_ids == search_ids + obs_ids + answer_ids + [tokenizer.eos_token_id]
        assert episode.env_mask == [1] * len(search_ids) + [0] * len(obs_ids) + [1] * len(answer_ids) + [0]
        assert episode.token_turn == [0] * len(search_ids) + [-1] * len(obs_ids) + [1] * len(answer_ids) + [-1]
        prompt_len = len(episode.prompt_ids)
        assert episode.belief_boundaries == [prompt_len, prompt_len + len(search_ids) + len(obs_ids)]
        assert episode.num_turns == 2 and episode.num_searches == 1 and episode.done
        assert episode.question_index == index
    assert episodes[0].outcome == 1.0 and episodes[0].gold_recall == 1.0  # question 3: right answer, gold retrieved
    assert episodes[1].outcome == 0.5 and episodes[1].gold_recall == 0.0  # question 5: "Person 3" vs "Person 5": F1 0.5

    # Turn rewards = [IG of the search, outcome]; every policy token of turn t carries A_t, observations 0.
    beliefs = [torch.tensor([math.log(0.1), math.log(0.6)]), torch.tensor([math.log(0.2), math.log(0.1)])]
    assign_turn_rewards(episodes, beliefs, info_gain_type="prob_diff")
    assert episodes[0].turn_rewards == pytest.approx([0.5, 1.0])
    assert episodes[1].turn_rewards == pytest.approx([-0.1, 0.5])
    advantages = turn_advantages([e.turn_rewards for e in episodes])
    for episode, turn_advs in zip(episodes, advantages):
        per_token = broadcast_turn_advantages(episode.token_turn, turn_advs)
        for value, mask, turn in zip(per_token, episode.env_mask, episode.token_turn):
            assert value == (turn_advs[turn] if mask else 0.0)


def test_format_error_and_token_budget_end_episodes(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    bad = run_episodes(
        [make_world_env()], [1], ScriptedPolicy(tokenizer, ["Film 1 please"]), tokenizer=tokenizer,
        max_turns=3, max_turn_length=24, max_completion_length=400,
        eos_token_id=tokenizer.eos_token_id,
    )[0]
    assert bad.done and bad.format_error and bad.outcome == -2.0 and bad.num_turns == 1
    assert bad.completion_ids[-1] == tokenizer.eos_token_id and bad.env_mask[-1] == 0  # closed with EOS, not trained

    search_ids = tokenizer("<search> Film 1 </search>", add_special_tokens=False)["input_ids"]
    full = run_episodes(
        [make_world_env()], [1], ScriptedPolicy(tokenizer, ["<search> Film 1 </search>"] * 3), tokenizer=tokenizer,
        max_turns=3, max_turn_length=24, max_completion_length=len(search_ids) + 3,
        eos_token_id=tokenizer.eos_token_id,
    )[0]
    # no room for the observation: the episode ends without an answer (the format penalty by default, as the
    # official code scores a transcript without <answer>), and it is not closed with EOS
    assert full.done and full.budget_exhausted and full.outcome == -2.0 and full.num_turns == 1
    assert full.completion_ids == search_ids and full.belief_boundaries == [len(full.prompt_ids)]
    assert not full.format_error  # the search itself was well formed: the penalty is for never answering
    lenient = run_episodes(
        [make_world_env(no_answer_reward=0.0)], [1], ScriptedPolicy(tokenizer, ["<search> Film 1 </search>"] * 3),
        tokenizer=tokenizer, max_turns=3, max_turn_length=24,
        max_completion_length=len(search_ids) + 3, eos_token_id=tokenizer.eos_token_id,
    )[0]
    assert lenient.budget_exhausted and lenient.outcome == 0.0  # the named option restores "no answer = 0"


@pytest.mark.parametrize("no_answer_reward, expected", [(None, -2.0), (0.0, 0.0), (-0.5, -0.5)])
def test_running_out_of_turns_without_an_answer_gets_the_no_answer_reward(tiny_model_dir, no_answer_reward, expected):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    env = make_world_env(max_turns=2, no_answer_reward=no_answer_reward)
    (episode,) = run_episodes(
        [env], [1], ScriptedPolicy(tokenizer, ["<search> Film 1 </search>"] * 2), tokenizer=tokenizer,
        max_turns=2, max_turn_length=24, max_completion_length=400,
        eos_token_id=tokenizer.eos_token_id,
    )
    assert episode.done and episode.num_turns == 2 and episode.num_searches == 2 and not episode.format_error
    assert episode.outcome == expected
    # the env itself gives it at its turn limit (Gymnasium truncation), without the trainer
    env.reset(options={"question_index": 1})
    assert env.step("<search> Film 1 </search>")[1:4] == (0.0, False, False)
    assert env.step("<search> Film 1 </search>")[1:4] == (expected, False, True)


def test_force_think_and_system_prompt_shape_the_rollout(tiny_model_dir):
    """The official format: a system message, and <think> written into the context at the start of every turn
    (not trained); the env parses '<think>' + the generated text; beliefs are scored before the forced <think>."""
    from transformers import AutoTokenizer

    from igpo_envs.protocol import THINK_OPEN

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    think = tokenizer(THINK_OPEN, add_special_tokens=False)["input_ids"]
    turns = [" plan </think> <search> Film 3 </search>", " done </think> <answer> Person 3 </answer>"]
    (episode,) = run_episodes(
        [make_world_env()], [3], ScriptedPolicy(tokenizer, turns), tokenizer=tokenizer,
        max_turns=3, max_turn_length=24, max_completion_length=400, eos_token_id=tokenizer.eos_token_id,
        system_prompt="You are a careful researcher.", force_think=True,
    )
    assert episode.outcome == 1.0 and episode.num_turns == 2 and not episode.format_error
    prompt = encode_prompt(tokenizer, [{"role": "system", "content": "You are a careful researcher."},
                                       {"role": "user", "content": render_prompt(ITEMS[3].question)}])
    assert episode.prompt_ids == prompt + think  # turn 0's forced <think> is prompt (context, not trained)
    passages = KeywordRetriever(PASSAGES).search(["Film 3"], 2)[0]
    obs = tokenizer(observation_text(format_observation(passages, "tag")), add_special_tokens=False)["input_ids"]
    first, second = (tokenizer(t, add_special_tokens=False)["input_ids"] for t in turns)
    assert episode.completion_ids == first + obs + think + second + [tokenizer.eos_token_id]
    assert episode.env_mask == [1] * len(first) + [0] * (len(obs) + len(think)) + [1] * len(second) + [0]
    # v_0 after the question, v_1 after the observation: both before a forced <think> (the official probe opens one)
    assert episode.belief_boundaries == [len(prompt), len(prompt) + len(think) + len(first) + len(obs)]
    # without force_think a turn that writes no <think> is fine; with it, a turn that never closes it is malformed
    (unclosed,) = run_episodes(
        [make_world_env()], [3], ScriptedPolicy(tokenizer, ["<search> Film 3 </search>"]), tokenizer=tokenizer,
        max_turns=3, max_turn_length=24, max_completion_length=400,
        eos_token_id=tokenizer.eos_token_id, force_think=True,
    )
    assert unclosed.format_error and unclosed.outcome == -2.0


# ---------------------------------------------------------------------------------------------------------------------
# End to end with TRL
# ---------------------------------------------------------------------------------------------------------------------
def test_igpo_steps_change_weights_log_finite_metrics_and_use_turn_advantages(synth_model_dir, tmp_path,
                                                                               monkeypatch):
    """A few IGPO steps on igpo/SynthMultiHop-v0 (built from the config's env_id/env_kwargs) with a tiny local model."""
    import igpo_trainer.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "ROLLOUT_HISTORY", 1)  # the history keeps the last batches only
    args = make_config(tmp_path, env_id="igpo/SynthMultiHop-v0", env_kwargs=SYNTH, topk=1, max_completion_length=160,
                       max_turn_length=32)
    trainer = IGPOTrainer(model=str(synth_model_dir), args=args)
    captured = capture_generations(trainer)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "no weight changed"
    assert len(trainer.rollout_history) == 1 and len(trainer.rollout_history[0]) == len(captured[-1][0])

    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2
    for key in ("reward", "igpo/f1", "igpo/em", "igpo/turns", "igpo/searches", "igpo/format_error",
                "igpo/info_gain_per_search", "igpo/zero_adv_group_frac", "igpo/ig_time_share", "igpo/gold_recall"):
        for log in logs:
            assert key in log and math.isfinite(log[key]), (key, log)
    assert 0.0 < logs[0]["igpo/ig_time_share"] < 1.0

    saw_multi_turn = False
    for rows, output in captured:
        advantages, tool_mask = output["advantages"], output["tool_mask"]
        assert advantages.shape == output["completion_ids"].shape  # (B, T) per-token advantages
        assert torch.all(advantages[tool_mask == 0] == 0)  # observation / added tokens carry no advantage
        for b, row in enumerate(rows):
            turns = row["igpo_token_turn"]
            assert len(row["igpo_turn_rewards"]) == max(turns) + 1  # one reward per turn
            for t in set(turns) - {-1}:
                values = {advantages[b, j].item() for j, turn in enumerate(turns) if turn == t}
                assert len(values) == 1  # every policy token of turn t carries the same A_t
            saw_multi_turn |= max(turns) >= 1
        # recompute from the turn rewards: group-normalised, discounted, broadcast
        G = 4
        for g in range(0, len(rows), G):
            expected = turn_advantages([r["igpo_turn_rewards"] for r in rows[g : g + G]])
            for b in range(g, g + G):
                turns = rows[b]["igpo_token_turn"]
                first = {t: turns.index(t) for t in set(turns) - {-1}}
                for t, j in first.items():
                    assert advantages[b, j].item() == pytest.approx(expected[b - g][t], abs=1e-5)
    assert saw_multi_turn, "the warm-started tiny model never searched: the test would not check turn advantages"


def trl_grpo_advantages(rewards, G, scale_rewards="group", weight=1.0):
    """TRL 1.16's GRPO advantages for one reward function (its `sum_then_normalize` branch, with its own `nanstd`):
    (w*r - group mean) / (group std, Bessel-corrected, + 1e-4); "batch" takes the std over the whole batch."""
    from trl.trainer.utils import nanstd

    r = torch.tensor(rewards, dtype=torch.float32) * weight
    mean = torch.nanmean(r.view(-1, G), dim=1).repeat_interleave(G)
    if scale_rewards == "none":
        return r - mean
    std = nanstd(r) if scale_rewards == "batch" else nanstd(r.view(-1, G), dim=1).repeat_interleave(G)
    return (r - mean) / (std + 1e-4)


@pytest.mark.parametrize("options", [{}, {"scale_rewards": "none", "reward_weights": [2.0]},
                                     {"scale_rewards": "batch"}])
def test_information_gain_off_gives_trls_grpo_advantages(tiny_model_dir, tmp_path, options):
    """use_information_gain=False is multi-turn GRPO exactly as TRL computes it: TRL's statistics (Bessel-corrected
    std + 1e-4, not IGPO's population std), and TRL's scale_rewards and reward_weights honoured."""
    args = make_config(tmp_path, use_information_gain=False, max_steps=1, **options)
    trainer = IGPOTrainer(model=str(tiny_model_dir), args=args, env=make_world_env())
    captured = capture_generations(trainer)
    trainer.train()
    rows, output = captured[0]
    assert all(len(r["igpo_turn_rewards"]) == 1 for r in rows)
    outcomes = [r["igpo_outcome"] for r in rows]
    assert len(set(outcomes)) > 1, "every outcome equal: the test would not compare any statistics"
    expected = trl_grpo_advantages(outcomes, 4, options.get("scale_rewards", "group"),
                                   options.get("reward_weights", [1.0])[0])
    assert output["advantages"].shape == (len(rows),)  # one advantage per sequence, TRL's own tensor
    assert torch.allclose(output["advantages"], expected, atol=1e-6)
    assert "igpo/ig_time_share" not in trainer.state.log_history[0]


@pytest.mark.parametrize("use_information_gain", [True, False])
def test_a_nan_reward_gets_zero_advantage_is_counted_and_warned_once(tiny_model_dir, tmp_path, monkeypatch,
                                                                     use_information_gain):
    """One rollout per batch gets a NaN outcome (as a broken reward or a NaN belief would give): training goes on,
    that rollout's advantage is 0 and its group is normalised without it, igpo/nonfinite_reward_rollouts counts it,
    and the trainer warns once for the run."""
    import warnings

    import igpo_trainer.trainer as trainer_module

    original = trainer_module.assign_turn_rewards

    def poisoned(episodes, beliefs, **kwargs):
        episodes[1].outcome = float("nan")
        return original(episodes, beliefs, **kwargs)

    monkeypatch.setattr(trainer_module, "assign_turn_rewards", poisoned)
    args = make_config(tmp_path, use_information_gain=use_information_gain, max_steps=2)
    trainer = IGPOTrainer(model=str(tiny_model_dir), args=args, env=make_world_env())
    captured = capture_generations(trainer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    assert [str(w.message).count("non-finite reward") for w in caught if w.category is RuntimeWarning] == [1]
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2 and all(h["igpo/nonfinite_reward_rollouts"] == 1.0 and math.isfinite(h["loss"])
                                  for h in logs)
    for rows, output in captured:
        advantages = output["advantages"].reshape(len(rows), -1)
        assert torch.isfinite(advantages).all() and torch.all(advantages[1] == 0)
        group = [r["igpo_turn_rewards"] for r in rows[:4]]
        if use_information_gain:  # the others are normalised as if the NaN rollout were not in the group
            kept = turn_advantages([group[0], group[2], group[3]])
            for b, turn_advs in zip([0, 2, 3], kept):
                first = {t: rows[b]["igpo_token_turn"].index(t) for t in range(len(turn_advs))}
                for t, j in first.items():
                    assert advantages[b, j].item() == pytest.approx(turn_advs[t], abs=1e-5)
        else:  # TRL's unscorable completion: out of the baseline
            outcomes = [rows[b]["igpo_outcome"] for b in (0, 2, 3)]
            expected = trl_grpo_advantages(outcomes, 3)
            assert torch.allclose(advantages[[0, 2, 3], 0], expected, atol=1e-6)


def test_igpo_honours_reward_weights_and_scale_rewards_none(tiny_model_dir, tmp_path):
    """TRL's reward_weights weigh the outcome reward (the one reward function) against the IG rewards, and
    scale_rewards='none' centres the group without dividing by its std (the official norm_adv_by_std_in_grpo=False)."""
    args = make_config(tmp_path, max_steps=1, reward_weights=[0.5], scale_rewards="none")
    trainer = IGPOTrainer(model=str(tiny_model_dir), args=args, env=make_world_env())
    captured = capture_generations(trainer)
    trainer.train()
    rows, output = captured[0]
    for g in range(0, len(rows), 4):
        weighted = [r["igpo_turn_rewards"][:-1] + [0.5 * r["igpo_turn_rewards"][-1]] for r in rows[g : g + 4]]
        expected = turn_advantages(weighted, scale=False)
        for b in range(g, g + 4):
            turns = rows[b]["igpo_token_turn"]
            for t in set(turns) - {-1}:
                assert output["advantages"][b, turns.index(t)].item() == pytest.approx(expected[b - g][t], abs=1e-6)


def test_resume_from_checkpoint_restores_step_and_data_order(tiny_model_dir, tmp_path):
    full = IGPOTrainer(
        model=str(tiny_model_dir), args=make_config(tmp_path / "full", max_steps=4), env=make_world_env()
    )
    full.train()
    interrupted = IGPOTrainer(  # the same run, stopped after its checkpoint at step 2
        model=str(tiny_model_dir),
        args=make_config(tmp_path / "resumed", max_steps=2, save_strategy="steps", save_steps=2),
        env=make_world_env(),
    )
    interrupted.train()
    assert interrupted.rollout_history == full.rollout_history[:2]
    checkpoint = tmp_path / "resumed" / "run" / "checkpoint-2"
    assert checkpoint.is_dir()
    resumed = IGPOTrainer(
        model=str(tiny_model_dir),
        args=make_config(tmp_path / "resumed", max_steps=4, save_strategy="steps", save_steps=2),
        env=make_world_env(),
    )
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 4
    assert len(resumed.rollout_history) == 2  # only steps 3 and 4 were generated after resuming
    assert resumed.rollout_history == full.rollout_history[2:]  # the same questions, in the same order


def test_ig_clip_bounds_information_gain_rewards():
    from igpo_trainer.rollout import Episode

    episode = Episode(prompt_ids=[1], golden_answers=("x",), num_turns=3, outcome=1.0)
    beliefs = [torch.tensor([math.log(0.1), math.log(0.9), math.log(0.2)])]
    assign_turn_rewards([episode], beliefs, info_gain_type="prob_diff", ig_clip=0.5)
    assert episode.turn_rewards == pytest.approx([0.5, -0.5, 1.0])  # IG 0.8 and -0.7 clipped, outcome untouched
    assign_turn_rewards([episode], beliefs, info_gain_type="log_prob_diff")
    assert episode.turn_rewards == pytest.approx([math.log(9), math.log(2 / 9), 1.0])
    with pytest.raises(RuntimeError, match="bookkeeping"):  # beliefs must match the turns played
        assign_turn_rewards([episode], [torch.tensor([0.0, 0.0])])


def test_trainer_overrides_only_its_trl_hooks_and_config_documents_its_fields():
    """IGPO plugs into TRL through rollout_func plus two overrides; a new override (or a TRL rename that orphans one)
    fails here. Every field IGPOConfig adds has help text, and it keeps TRL's defaults but the one it changes."""
    import dataclasses

    from trl import GRPOConfig, GRPOTrainer

    overridden = {name for name in vars(IGPOTrainer)
                  if not name.startswith("__") and callable(getattr(GRPOTrainer, name, None))}
    assert overridden == {"_generate_and_score_completions", "training_step"}
    trl_fields = {f.name: f for f in dataclasses.fields(GRPOConfig)}
    own = [f for f in dataclasses.fields(IGPOConfig) if f.name not in trl_fields]
    assert {"info_gain_type", "info_gain_norm", "gamma", "env_id"} <= {f.name for f in own}
    assert all(f.metadata.get("help") for f in own), [f.name for f in own if not f.metadata.get("help")]
    changed = {f.name for f in dataclasses.fields(IGPOConfig)
               if f.name in trl_fields and f.default != trl_fields[f.name].default}
    assert changed == {"vllm_importance_sampling_correction"}  # off: see IGPOConfig's help text


def test_config_validates_values():
    common = dict(output_dir="/tmp/unused", use_cpu=True, num_generations=4, per_device_train_batch_size=8)
    with pytest.raises(ValueError, match="info_gain_type"):
        IGPOConfig(info_gain_type="kl", **common)
    with pytest.raises(ValueError, match="info_gain_norm"):
        IGPOConfig(info_gain_norm="batch", **common)
    with pytest.raises(ValueError, match="gamma"):
        IGPOConfig(gamma=1.5, **common)
    with pytest.raises(ValueError, match="adv_std_floor"):
        IGPOConfig(adv_std_floor=-1.0, **common)
    with pytest.raises(ValueError, match="env_kwargs is not valid JSON"):
        IGPOConfig(env_kwargs="{hops: 2", **common)
    with pytest.raises(ValueError, match="scale_rewards='batch'"):
        IGPOConfig(scale_rewards="batch", **common)  # undefined for per-group turn rewards; fine for GRPO (below)
    with pytest.raises(ValueError, match="multi_objective_aggregation"):
        IGPOConfig(multi_objective_aggregation="normalize_then_sum", **common)
    with pytest.raises(ValueError, match="protocol='tool_call'"):
        IGPOConfig(system_prompt="official", **common)
    with pytest.raises(ValueError, match="no_answer_reward"):
        IGPOConfig(no_answer_reward=float("nan"), **common)
    IGPOConfig(scale_rewards="batch", use_information_gain=False, **common)
    config = IGPOConfig(env_kwargs='{"hops": 2}', max_turns=4, **common)
    assert config.env_make_kwargs() == {"protocol": "tag", "topk": 3, "max_turns": 4, "format_penalty": -2.0,
                                        "no_answer_reward": None, "hops": 2}
    assert not config.vllm_importance_sampling_correction  # off, as in the official code
    official = IGPOConfig(protocol="tool_call", system_prompt="official", **common)
    assert official.env_make_kwargs()["prompt_template"] == "{question}"  # the instructions are the system message
    assert "<tool_call>" in official.system_prompt_text and "<think>" in official.system_prompt_text


# ---------------------------------------------------------------------------------------------------------------------
# CLI and configs
# ---------------------------------------------------------------------------------------------------------------------
CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")


@pytest.mark.parametrize("name", ["cpu_tiny_synth.yaml", "gpu_qwen2.5_7b_paper.yaml"])
def test_shipped_configs_parse_into_igpo_config(name):
    from igpo_trainer.cli import make_parser

    # bf16 cannot be validated on a CPU machine; every other key must be a known field with a valid value
    script, config, model = make_parser().parse_args_and_config(
        args=["--config", os.path.join(CONFIGS, name), "--bf16", "false", "--use_cpu", "true"]
    )
    assert isinstance(config, IGPOConfig) and config.use_information_gain and config.info_gain_norm == "joint"
    assert config.gamma == 1.0 and config.format_penalty == -2.0 and model.model_name_or_path
    if name.startswith("gpu"):  # the paper's setting
        assert model.model_name_or_path == "Qwen/Qwen2.5-7B-Instruct"
        assert (config.learning_rate, config.num_generations, config.max_turns) == (1e-6, 16, 10)
        assert (config.beta, config.epsilon, config.use_vllm) == (0.001, 0.2, True)
        # the official code's loss aggregation (seq-mean-token-sum, up to a constant), entropy bonus, rollout format
        assert (config.loss_type, config.entropy_coef, config.delta) == ("dr_grpo", 0.001, 3.0)
        assert (config.protocol, config.system_prompt, config.force_think, config.probe_style) == (
            "tool_call", "official", True, "official")
        assert config.turn_length == 2000 and not config.vllm_importance_sampling_correction
        assert config.no_answer_reward is None and config.adv_std_floor == 0.0  # never answering = format penalty


def test_cli_trains_on_the_synthetic_env_and_resumes_latest(tmp_path):
    """igpo-train end to end on igpo/SynthMultiHop-v0: builds a tiny model, trains a step, resumes for a second."""
    from igpo_trainer.cli import main

    model_dir, out = tmp_path / "model", tmp_path / "run"
    common = [
        "--config", os.path.join(CONFIGS, "cpu_tiny_synth.yaml"),
        "--model_name_or_path", str(model_dir), "--output_dir", str(out),
        "--env_kwargs", '{"num_docs": 60, "hops": 1, "num_questions": 8}',
        "--per_device_train_batch_size", "8", "--num_generations", "4", "--save_steps", "1",
        "--max_completion_length", "64", "--max_turn_length", "16", "--max_turns", "2",
    ]
    assert main([*common, "--max_steps", "1"]) == 0
    assert (model_dir / "config.json").is_file() and (out / "checkpoint-1").is_dir()
    assert main([*common, "--max_steps", "2", "--resume_from_checkpoint", "latest"]) == 0
    assert (out / "checkpoint-2").is_dir()
    import json

    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    logs = [h for h in state["log_history"] if "igpo/f1" in h]
    assert [h["step"] for h in logs] == [1, 2]  # the resumed run kept step 1's log and added step 2
    assert all(math.isfinite(h["igpo/format_error"]) and math.isfinite(h["reward"]) for h in logs)


# ---------------------------------------------------------------------------------------------------------------------
# One stepping API and one spelling per setting
# ---------------------------------------------------------------------------------------------------------------------
def test_run_episodes_steps_through_a_vector_env_with_one_search_per_turn(tiny_model_dir):
    from gymnasium.vector import AutoresetMode
    from transformers import AutoTokenizer

    from igpo_envs.vector import SearchQAVectorEnv

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    retriever = KeywordRetriever(PASSAGES)
    envs = [SearchQAEnv(ITEMS, retriever=retriever, topk=2) for _ in range(3)]
    venv = SearchQAVectorEnv.from_envs(envs, autoreset_mode=AutoresetMode.DISABLED)
    policy = ScriptedPolicy(tokenizer, ["<search> Film 3 </search>", "<answer> Person 3 </answer>"])
    episodes = run_episodes(venv, [3, 3, 5], policy, tokenizer=tokenizer, max_turns=3, max_turn_length=24,
                            max_completion_length=400, eos_token_id=tokenizer.eos_token_id)
    assert retriever.calls == [["Film 3"] * 3]  # the first turn's three searches: one retriever call
    assert [e.actions[0]["kind"] for e in episodes] == ["search"] * 3 and all(e.done for e in episodes)
    assert [e.actions[1] for e in episodes][0] == {"kind": "answer", "argument": "Person 3", "error": None}
    with pytest.raises(ValueError, match="DISABLED"):
        run_episodes(SearchQAVectorEnv.from_envs(envs), [3, 3, 5], policy, tokenizer=tokenizer, max_turns=3,
                     max_turn_length=24, max_completion_length=400, eos_token_id=tokenizer.eos_token_id)
    with pytest.raises(ValueError, match="3 sub-envs"):
        run_episodes(venv, [3], policy, tokenizer=tokenizer, max_turns=3, max_turn_length=24,
                     max_completion_length=400, eos_token_id=tokenizer.eos_token_id)


def test_env_settings_have_one_spelling_and_choices_come_from_their_owners():
    import dataclasses

    from igpo_envs.information_gain.formulas import INFO_GAIN_TYPES
    from igpo_envs.protocol import PROBE_STYLES, PROTOCOLS
    from igpo_trainer.advantages import NORMS

    common = dict(output_dir="/tmp/unused", use_cpu=True, num_generations=4, per_device_train_batch_size=8)
    with pytest.raises(ValueError, match=r"env_kwargs sets \['protocol', 'topk'\].*--protocol, --topk"):
        IGPOConfig(env_kwargs={"topk": 2, "protocol": "tool_call", "hops": 2}, **common)
    with pytest.raises(ValueError, match="env_kwargs must be a JSON object, got list"):
        IGPOConfig(env_kwargs="[1]", **common)
    assert IGPOConfig(env_kwargs='{"hops": 2}', topk=2, **common).env_make_kwargs()["topk"] == 2
    fields = {f.name: f.metadata for f in dataclasses.fields(IGPOConfig)}
    assert fields["protocol"]["choices"] == list(PROTOCOLS)
    assert fields["probe_style"]["choices"] == list(PROBE_STYLES)
    assert fields["info_gain_type"]["choices"] == list(INFO_GAIN_TYPES)
    assert fields["info_gain_norm"]["choices"] == list(NORMS)


def test_trainer_refuses_an_env_speaking_another_protocol(tmp_path):
    env = SearchQAEnv(ITEMS, retriever=KeywordRetriever(PASSAGES), protocol="tool_call")
    args = IGPOConfig(output_dir=str(tmp_path), use_cpu=True, num_generations=4, per_device_train_batch_size=8,
                      report_to="none", protocol="tag")
    with pytest.raises(ValueError, match="env speaks protocol 'tool_call' but args.protocol is 'tag'"):
        IGPOTrainer(model=str(tmp_path / "never-loaded"), args=args, env=env)


def test_train_cli_env_kwargs_spellings_and_quantization_refused_clearly(tmp_path, capsys):
    from igpo_trainer.cli import main, make_parser

    base = ["--output_dir", str(tmp_path), "--use_cpu", "true", "--model_name_or_path", str(tmp_path / "m")]
    for flag in ("--env-kwargs", "--env_kwargs"):
        _, args, _ = make_parser().parse_args_and_config(args=[*base, flag, '{"hops": 2}'])
        assert args.env_kwargs == {"hops": 2}
    for flag in ("--load_in_4bit", "--load_in_8bit"):  # never silently trained unquantized
        reasons = "quantizes with bitsandbytes|needs a CUDA GPU|loads a quantized"
        with pytest.raises(SystemExit, match=f"{flag} ({reasons})"):
            main([*base, flag, "true"])
