"""Evidence-based demonstrations (oracle trajectories of gold-evidence envs) and the ``igpo-warmstart`` command."""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

ENV_ID = "igpo/HotpotQA-Distractor-v0"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_env(protocol="tag", **kwargs):
    from igpo_trainer.trainer import make_env_from_id

    return make_env_from_id(ENV_ID, protocol=protocol, topk=1, max_turns=3, **kwargs)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A random tiny Qwen2 whose BPE tokenizer was trained on the Distractor env's prompts and passages."""
    from igpo_trainer.cli import build_tiny_for_env

    return build_tiny_for_env(make_env(), str(tmp_path_factory.mktemp("tiny")), max_texts=40, vocab_size=1024,
                              hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1)


def rollout_of_actions(env, index, actions, tokenizer):
    """What `igpo-train`'s episode loop builds when the policy writes ``actions`` on question ``index``."""
    from igpo_trainer.rollout import run_episodes

    turn = iter(actions)

    def scripted(contexts, max_new_tokens):
        ids = tokenizer(next(turn), add_special_tokens=False)["input_ids"]
        return [(ids, None) for _ in contexts]

    (episode,) = run_episodes([env.unwrapped.spawn()], [index], scripted, tokenizer=tokenizer,
                              max_turns=env.unwrapped.max_turns, max_turn_length=256, max_completion_length=8192,
                              eos_token_id=tokenizer.eos_token_id)
    return episode


def check_rendered_like_rollout(env, tokenizer, index):
    from igpo_trainer.demonstrations import oracle_plan, play_oracle, render_trajectory

    prompt, turns, info = play_oracle(env, index)
    item = env.unwrapped.items[index]
    assert [a for a, _ in turns] == oracle_plan(item, env.unwrapped.protocol)
    assert info["em"] == 1.0 and turns[-1][1] is None
    rendered = render_trajectory(tokenizer, prompt, turns)
    episode = rollout_of_actions(env, index, [a for a, _ in turns], tokenizer)
    assert rendered["input_ids"] == episode.prompt_ids + episode.completion_ids
    mask = rendered["completion_mask"]
    assert sum(mask[: len(episode.prompt_ids)]) == 0  # never trained on the prompt
    assert mask[len(episode.prompt_ids) : -1] == episode.env_mask[:-1]  # policy turns 1, observations 0
    assert mask[-1] == 1 and rendered["input_ids"][-1] == tokenizer.eos_token_id  # learns to stop after answering
    trained = tokenizer.decode([t for t, m in zip(rendered["input_ids"], mask) if m], skip_special_tokens=True)
    assert item.golden_answers[0] in trained and "Doc 1" not in trained  # observations are masked out


@pytest.mark.parametrize("protocol", ["tag", "tool_call"])
def test_demonstrations_render_exactly_as_rollouts(tiny_dir, protocol):
    from igpo_envs.hf_tokenizer import load_tokenizer

    env = make_env(protocol)
    check_rendered_like_rollout(env, load_tokenizer(tiny_dir), 3)


def test_demonstrations_render_exactly_as_rollouts_real_tokenizer(real_tokenizer):
    """The same with Qwen2.5's and SmolLM2's byte-level BPE tokenizers (chat templates, merges across text)."""
    for protocol in ("tag", "tool_call"):
        check_rendered_like_rollout(make_env(protocol), real_tokenizer, 7)


def test_oracle_demonstrations_stats_and_errors(tiny_dir):
    from igpo_envs.hf_tokenizer import load_tokenizer
    from igpo_envs.types import QAItem
    from igpo_trainer.demonstrations import NoGoldEvidenceError, oracle_demonstrations, oracle_plan, play_oracle

    env = make_env()
    rows, stats = oracle_demonstrations(env, load_tokenizer(tiny_dir), [0, 1, 2], 5, seed=1)
    assert len(rows) == 5 and stats["demo_em"] == 1.0 and 0.0 < stats["demo_gold_recall"] <= 1.0
    with pytest.raises(NoGoldEvidenceError, match="no gold evidence"):
        oracle_plan(QAItem("q", "Who?", ("x",)))
    with pytest.raises(ValueError, match="out of range"):
        oracle_demonstrations(env, load_tokenizer(tiny_dir), [400])
    from igpo_trainer.trainer import make_env_from_id

    short = make_env_from_id(ENV_ID, topk=1, max_turns=2)
    with pytest.raises(RuntimeError, match="max_turns=2"):  # two gold titles + the answer need 3 turns
        play_oracle(short, 0)


def test_warmstart_command_end_to_end(tiny_dir, tmp_path):
    """``igpo-warmstart`` on a tiny local model: a few SFT steps, a saved model that differs from the start."""
    from safetensors.torch import load_file

    from igpo_trainer.warmstart_cli import main

    out = tmp_path / "sft"
    code = main(["--model", str(tiny_dir), "--env", ENV_ID, "--out", str(out), "--train_questions", "0:6",
                 "--num_examples", "6", "--epochs", "1", "--batch_size", "2", "--learning_rate", "1e-3",
                 "--topk", "1", "--max_turns", "3", "--no_progress", "true"])
    assert code == 0
    summary = json.loads((out / "warmstart.json").read_text())
    assert summary["examples"] == 6 and math.isfinite(summary["train_loss"])
    assert summary["demo_em"] == 1.0
    before, after = load_file(tiny_dir / "model.safetensors"), load_file(out / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before if k in after)
    # bad input gets a clear message, not a traceback
    assert main(["--model", str(tiny_dir), "--out", str(tmp_path / "x"), "--train_questions", "5,999"]) == 2


def test_warmstart_env_settings_have_one_spelling():
    from igpo_trainer.warmstart_cli import WarmStartArguments, env_make_kwargs

    args = WarmStartArguments(model="m", out="o", env_kwargs='{"corpus": "c.jsonl"}', topk=2)
    assert env_make_kwargs(args) == {"protocol": "tag", "topk": 2, "max_turns": 10, "corpus": "c.jsonl"}
    with pytest.raises(ValueError, match=r"--env-kwargs sets \['topk'\]: use the flags --topk"):
        env_make_kwargs(WarmStartArguments(model="m", out="o", env_kwargs='{"topk": 5}'))
