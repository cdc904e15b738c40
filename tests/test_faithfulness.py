"""Faithfulness to the paper and the official IGPO code: the vLLM turn limit, TRL's importance-sampling drops, the
official probe and system prompt (the trainer-level checks are in test_trainer.py and test_advantages.py)."""

import os
from types import SimpleNamespace

import pytest
import torch

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from igpo_envs.protocol import OFFICIAL_SYSTEM_PROMPT, THINK_OPEN, answer_probe, parse_action
from igpo_trainer.rollout import VLLMTurnGenerator
from igpo_trainer.trainer import dropped_sequences, outcome_reward


# ---------------------------------------------------------------------------------------------------------------------
# vLLM: the turn limit reaches SamplingParams.max_tokens (through TRL's own VLLMGeneration.generate)
# ---------------------------------------------------------------------------------------------------------------------
class RecordingSamplingParams:
    """Stands in for vllm.SamplingParams (vLLM needs a GPU): records the keyword arguments TRL builds."""

    made: list[dict] = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        RecordingSamplingParams.made.append(kwargs)


class FakeLLM:
    """vllm.LLM.generate's output shape: per prompt one RequestOutput with one completion and its logprobs."""

    def generate(self, prompts, sampling_params, use_tqdm=False):
        n = sampling_params.kwargs["max_tokens"]
        return [
            SimpleNamespace(
                prompt_token_ids=p["prompt_token_ids"],
                outputs=[SimpleNamespace(token_ids=[7] * n, logprobs=[{7: SimpleNamespace(rank=1, logprob=-0.5)}] * n)],
            )
            for p in prompts
        ]


class FakeClient:
    """trl's VLLMClient.generate (server mode): records the request's max_tokens."""

    def __init__(self):
        self.max_tokens = []

    def generate(self, prompts, features=None, **sampling):
        self.max_tokens.append(sampling["max_tokens"])
        n = sampling["max_tokens"]
        return {"prompt_ids": prompts, "completion_ids": [[7] * n for _ in prompts],
                "logprobs": [[[-0.5]] * n for _ in prompts], "logprob_token_ids": None}


def trl_vllm_generation(mode, monkeypatch):
    """TRL's VLLMGeneration with its sampling settings, a fake engine, and the real `generate`."""
    import trl.generation.vllm_generation as vg

    monkeypatch.setattr(vg, "SamplingParams", RecordingSamplingParams, raising=False)
    RecordingSamplingParams.made.clear()
    generation = object.__new__(vg.VLLMGeneration)
    generation.__dict__.update(
        mode=mode, accelerator=SimpleNamespace(is_main_process=True, process_index=0), model=torch.nn.Linear(1, 1),
        temperature=1.0, top_p=1.0, top_k=0, min_p=None, repetition_penalty=1.0, max_completion_length=8192,
        logprobs=0, structured_outputs_regex=None, generation_kwargs={"stop": ["</search>"]},
        enable_sleep_mode=False, tensor_parallel_size=1, llm=FakeLLM(), vllm_client=FakeClient(),
    )
    return generation


@pytest.mark.parametrize("mode", ["colocate", "server"])
def test_vllm_turn_limit_reaches_sampling_params(mode, monkeypatch):
    generation = trl_vllm_generation(mode, monkeypatch)
    generate = VLLMTurnGenerator(SimpleNamespace(vllm_generation=generation))
    out = generate([[1, 2, 3], [4, 5]], 24)
    if mode == "colocate":
        assert [p["max_tokens"] for p in RecordingSamplingParams.made] == [24]
        assert RecordingSamplingParams.made[0]["stop"] == ["</search>"]  # the stop strings still reach vLLM
    else:
        assert generation.vllm_client.max_tokens == [24]
    assert [(len(ids), lps[0]) for ids, lps in out] == [(24, -0.5), (24, -0.5)]  # ids and sampling logprobs
    assert generation.max_completion_length == 8192  # restored: TRL's other calls keep the whole budget


def test_vllm_turn_limit_is_the_configs_turn_length(monkeypatch):
    """Through the episode loop: each turn asks vLLM for at most max_turn_length tokens (or what the completion
    budget has left), never the whole completion budget."""
    from conftest import KeywordRetriever

    from igpo_envs.env import SearchQAEnv
    from igpo_envs.types import Passage, QAItem
    from igpo_trainer.rollout import run_episodes

    class Tokenizer:  # ids 7 decode to a search turn; enough for the loop's bookkeeping
        eos_token_id = 0

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [8] * max(1, len(text.split()))}

        def decode(self, ids, skip_special_tokens=True):
            return "<search> Film 0 </search>"

    generation = trl_vllm_generation("colocate", monkeypatch)
    env = SearchQAEnv(questions=[QAItem("q0", "Who directed Film 0?", ("Person 0",))],
                      retriever=KeywordRetriever([Passage("d0", "Film 0", "Film 0 was directed by Person 0.")]),
                      max_turns=3, topk=1)
    (episode,) = run_episodes([env], [0], VLLMTurnGenerator(SimpleNamespace(vllm_generation=generation)),
                              tokenizer=Tokenizer(), max_turns=3, max_turn_length=16,
                              max_completion_length=60, eos_token_id=0)
    asked = [p["max_tokens"] for p in RecordingSamplingParams.made]
    assert asked[0] == 16 and all(n <= 16 for n in asked) and len(asked) == episode.num_turns


def test_dropped_sequences_counts_what_trls_masking_zeroes():
    mask = torch.tensor([[1, 1, 0, 1], [1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 0, 0]], dtype=torch.float32)
    per_sequence = torch.tensor([[0.0], [1.2], [0.0], [2.9]])  # sequence_mask: ratio 0 = dropped
    assert dropped_sequences(per_sequence, mask) == (1, 3)  # row 2 has no trained token: neither dropped nor counted
    per_token = torch.tensor([[0.0, 0.0, 5.0, 0.0], [1.0, 0.0, 1.0, 1.0], [0.0] * 4, [0.0, 1.0, 1.0, 1.0]])
    assert dropped_sequences(per_token, mask) == (2, 3)  # token_mask: a sequence is dropped when every token is


def test_outcome_reward_reports_a_non_finite_outcome_as_unscorable():
    assert outcome_reward(None, [1.0, float("nan"), -2.0, float("inf")]) == [1.0, None, -2.0, None]


# ---------------------------------------------------------------------------------------------------------------------
# The official rollout format
# ---------------------------------------------------------------------------------------------------------------------
def test_official_probe_opens_its_own_think():
    """The official probe closes a </think>: it must open one too, so it reads the same whether or not the rollout
    forced a <think> (beliefs are scored before any forced opening)."""
    prefix, answer, suffix = answer_probe("Paris", "tool_call", "official")
    assert prefix.startswith(THINK_OPEN) and prefix.count("<think>") == prefix.count("</think>") == 1
    assert answer == "Paris" and suffix == "\n</answer>"
    parsed = parse_action(prefix + answer + suffix, "tool_call")
    assert parsed.kind == "answer" and parsed.argument == "Paris"  # a well-formed answer turn


def test_official_system_prompt_examples_are_valid_turns():
    """The two formats the official system prompt teaches parse as a search and an answer in the tool_call protocol."""
    call = OFFICIAL_SYSTEM_PROMPT.split("<tool_call>\n")[-1].split("\n</tool_call>")[0]
    search = parse_action(f"{THINK_OPEN}\nI need the director.\n</think>\n<tool_call>\n{call}\n</tool_call>",
                          "tool_call")
    assert (search.kind, search.argument) == ("search", "your query")
    answer = parse_action(f"{THINK_OPEN}\nDone.\n</think>\n<answer>\nParis\n</answer>", "tool_call")
    assert (answer.kind, answer.argument) == ("answer", "Paris")


def test_trainer_logs_what_vllm_importance_sampling_drops():
    """With TRL's correction on, the step's output carries its weights; the trainer logs how many sequences they
    drop (and how many rollouts had non-finite rewards) without touching anything else."""
    from collections import defaultdict

    from igpo_trainer.trainer import IGPOTrainer

    trainer = SimpleNamespace(_metrics={"train": defaultdict(list)}, _warned_nonfinite=False,
                              accelerator=SimpleNamespace(gather=lambda t: t))
    mask = torch.ones(4, 3)
    output = {"completion_mask": mask, "tool_mask": torch.tensor([[1, 0, 1]] * 4),
              "importance_sampling_ratio": torch.tensor([[0.0], [1.0], [0.0], [2.5]])}
    IGPOTrainer._log_robustness(trainer, "train", output, 0)
    metrics = trainer._metrics["train"]
    assert metrics["igpo/vllm_is_dropped_seqs"] == [2.0] and metrics["igpo/vllm_is_dropped_frac"] == [0.5]
    assert metrics["igpo/nonfinite_reward_rollouts"] == [0.0] and not trainer._warned_nonfinite
    with pytest.warns(RuntimeWarning, match="non-finite reward"):  # correction off: no IS metric
        IGPOTrainer._log_robustness(trainer, "train", {"completion_mask": mask}, 3)
    assert metrics["igpo/vllm_is_dropped_seqs"] == [2.0] and metrics["igpo/nonfinite_reward_rollouts"] == [0.0, 3.0]
