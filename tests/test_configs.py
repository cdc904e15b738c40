"""Every shipped config loads, and its IGPO settings run the belief-scoring path (with a tiny model on the real Qwen2.5
tokenizer the configs name), whatever attention implementation it asks for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted([*ROOT.glob("configs/*.yaml"), *ROOT.glob("configs/scale/*.yaml")])
ACCELERATE = [p for p in CONFIGS if "distributed_type" in yaml.safe_load(p.read_text())]
TRAINING = [p for p in CONFIGS if p not in ACCELERATE]
# Flags a CPU-only machine needs to build a GPU config's TrainingArguments (bf16 is refused without a GPU).
CPU_OVERRIDES = ["--bf16", "false", "--use_cpu", "true"]


def test_the_configs_are_found():
    assert len(TRAINING) >= 3 and len(ACCELERATE) >= 2
    assert ROOT / "configs/scale/igpo_qwen2.5_7b_ray.yaml" in TRAINING


@pytest.mark.parametrize("path", ACCELERATE, ids=lambda p: str(p.relative_to(ROOT)))
def test_accelerate_configs_load(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    assert config.num_processes >= 1 and config.distributed_type is not None


def ig_episode(tokenizer, protocol: str):
    """A two-search episode of the toy questions as a rollout records it (`igpo_envs.transcript` pieces)."""
    from igpo_envs.protocol import format_observation, render_prompt
    from igpo_envs.transcript import observation_ids, prompt_ids, turn_ids
    from igpo_envs.types import Passage
    from igpo_trainer.rollout import Episode

    search = ("<search> {} </search>" if protocol == "tag"
              else '<tool_call>{{"name": "search", "arguments": {{"query": "{}"}}}}</tool_call>')
    episode = Episode(prompt_ids(tokenizer, render_prompt("Where was the discoverer of Quenn born?", protocol)),
                      ("Uppsala",))
    episode.belief_boundaries.append(len(episode.prompt_ids))
    for turn, query in enumerate(["Quenn discoverer", "Ada Lindqvist"]):
        episode.add_tokens(turn_ids(tokenizer, search.format(query)), policy_turn=turn)
        passages = [Passage(f"p{turn}", query, f"{query} is mentioned here.")]
        episode.add_tokens(observation_ids(tokenizer, format_observation(passages, protocol)), policy_turn=None)
        episode.belief_boundaries.append(len(episode.context))
    episode.add_tokens(turn_ids(tokenizer, "<answer> Uppsala </answer>"), policy_turn=2)
    episode.num_turns, episode.outcome = 3, 1.0
    return episode


@pytest.mark.parametrize("path", TRAINING, ids=lambda p: str(p.relative_to(ROOT)))
def test_training_configs_parse_and_score(path, qwen_tokenizer, tmp_path):
    from igpo_trainer.cli import make_parser
    from igpo_trainer.config import IGPOConfig
    from igpo_trainer.rollout import assign_turn_rewards, score_beliefs

    raw = yaml.safe_load(path.read_text())
    args = ["--config", str(path), "--output_dir", str(tmp_path)]
    if raw.get("bf16"):
        args += CPU_OVERRIDES
    script_args, config, model_args = make_parser().parse_args_and_config(args=args)
    assert isinstance(config, IGPOConfig)
    for key in ("protocol", "max_turns", "num_generations", "info_gain_type", "use_information_gain"):
        if key in raw:
            assert getattr(config, key) == raw[key], key
    if isinstance(config.env_kwargs, str):
        assert isinstance(json.loads(config.env_kwargs), dict)

    # The scoring path with the config's protocol, probe, IG formula, dtype and attention implementation.
    dtype = getattr(torch, model_args.dtype) if model_args.dtype not in (None, "auto") else torch.float32
    small = transformers.Qwen2Config(vocab_size=len(qwen_tokenizer), hidden_size=16, intermediate_size=32,
                                     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                     tie_word_embeddings=True)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(small, dtype=dtype, attn_implementation="sdpa").eval()
    wanted = model_args.attn_implementation or "sdpa"
    # flash-attn cannot load without a GPU: the config alone says so, as it would on the GPU machine.
    model.config._attn_implementation_internal = wanted
    episodes = [ig_episode(qwen_tokenizer, config.protocol) for _ in range(2)]
    beliefs = score_beliefs(model, qwen_tokenizer, episodes, protocol=config.protocol,
                            probe_style=config.probe_style)
    assert model.config._attn_implementation == wanted  # switched back after the scoring pass
    assert all(b.shape == (3,) and torch.isfinite(b).all() for b in beliefs)
    assign_turn_rewards(episodes, beliefs, info_gain_type=config.info_gain_type)
    assert len(episodes[0].turn_rewards) == 3 and episodes[0].turn_rewards[-1] == 1.0
