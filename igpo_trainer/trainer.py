"""`IGPOTrainer`: TRL's `GRPOTrainer` with multi-turn env rollouts and information-gain turn advantages.

What changes relative to GRPO, and where:

* generation: a ``rollout_func`` (TRL's own hook) plays whole episodes on the igpo env — one generation call and one
  retrieval call per turn for the whole batch — and returns ``env_mask`` so observation tokens carry no loss;
* rewards: TRL still computes and logs the outcome reward (answer F1 or format penalty) through a reward function,
  so ``reward``/``reward_std`` mean what they mean in GRPO;
* advantages: `_generate_and_score_completions` replaces TRL's per-sequence advantages (B,) with per-token ones
  (B, T): each policy token of turn t carries A_t from `igpo_trainer.advantages.turn_advantages`. TRL's clipped
  surrogate loss accepts (B, T) advantages unchanged.

``use_information_gain=False`` keeps every step of this path but leaves TRL's own GRPO advantages in place (one per
sequence, from the outcome reward, with TRL's statistics, ``scale_rewards``, ``reward_weights`` and
``multi_objective_aggregation``), so IGPO and multi-turn GRPO as TRL defines it differ in one switch.

A rollout whose reward is not finite (a NaN belief, a broken env) gets zero advantage and stays out of its group's
statistics (TRL's "unscorable" completion in GRPO mode); the trainer warns once and counts them in
``igpo/nonfinite_reward_rollouts``.
"""

from __future__ import annotations

import math
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import gather_object
from gymnasium.vector import AutoresetMode
from trl import GRPOTrainer
from trl.models.utils import unwrap_model_for_generation

from igpo_envs.hf_tokenizer import load_tokenizer
from igpo_envs.protocol import THINK_OPEN
from igpo_envs.vector import SearchQAVectorEnv
from igpo_trainer.config import IGPOConfig
from igpo_trainer.rollout import (
    STOP_STRINGS,
    HFTurnGenerator,
    Timer,
    VLLMTurnGenerator,
    assign_turn_rewards,
    broadcast_turn_advantages,
    episode_metrics,
    group_turn_advantages,
    run_episodes,
    score_beliefs,
    vllm_generation_kwargs,
)

QUESTION_COLUMN = "question_index"
#: How many rollout batches `IGPOTrainer.rollout_history` keeps.
ROLLOUT_HISTORY = 1000


def outcome_reward(completions, igpo_outcome, **kwargs) -> list[float | None]:
    """The outcome reward the env gave each episode (answer F1, or the format penalty), as a TRL reward function.

    A non-finite outcome is returned as None, TRL's "unscorable": zero advantage, left out of the group baseline.
    """
    return [float(r) if math.isfinite(float(r)) else None for r in igpo_outcome]


def dropped_sequences(importance_weights: torch.Tensor, mask: torch.Tensor) -> tuple[int, int]:
    """(sequences whose importance-sampling weight is 0 on every trained token, sequences with trained tokens).

    ``importance_weights`` is TRL's vLLM correction, (B, 1) per sequence or (B, T) per token; ``mask`` (B, T) marks the
    trained tokens. Masking modes set out-of-range weights to 0, which drops those tokens from the loss.
    """
    weights = importance_weights.expand_as(mask) * mask
    trained = mask.sum(-1) > 0
    return int((trained & (weights.abs().sum(-1) == 0)).sum()), int(trained.sum())


def make_env_from_id(env_id: str, **kwargs):
    """``gym.make(env_id, **kwargs)`` after importing igpo_envs (which registers the ``igpo/...`` ids)."""
    import gymnasium as gym

    import igpo_envs  # noqa: F401

    return gym.make(env_id, **kwargs)


def make_env(args: IGPOConfig):
    """The training env of a config: ``gym.make(args.env_id, **args.env_make_kwargs())``."""
    return make_env_from_id(args.env_id, **args.env_make_kwargs())


def clone_env(env):
    """An independent env sharing ``env``'s questions, corpus and retriever (`SearchQAEnv.spawn`)."""
    spawn = getattr(env.unwrapped, "spawn", None)
    if spawn is None:
        raise TypeError(f"{type(env.unwrapped).__name__} has no spawn(); rollouts need one env per rollout")
    return spawn()


def question_dataset(env, split_indices=None):
    """A TRL train dataset over the env's questions: columns ``prompt`` (the question) and ``question_index``."""
    from datasets import Dataset

    items = env.unwrapped.items
    indices = list(range(len(items))) if split_indices is None else list(split_indices)
    for i in indices:
        if not 0 <= i < len(items):
            raise ValueError(f"question index {i} out of range: the env has {len(items)} questions")
    return Dataset.from_dict({"prompt": [items[i].question for i in indices], QUESTION_COLUMN: indices})


class IGPOTrainer(GRPOTrainer):
    """GRPO on multi-turn search episodes with information-gain turn rewards (IGPO, arXiv 2510.14967).

    Args:
        model: a model id / local path or a `PreTrainedModel` (as for `GRPOTrainer`). With ``beta > 0`` TRL reloads
            the reference model from ``model.config._name_or_path``, so tiny models must be saved to disk.
        args: an `IGPOConfig`.
        env: the igpo env to train on (default ``gym.make(args.env_id, **args.env_make_kwargs())``). Rollouts use
            copies made by ``env_factory``, stepped together through one `SearchQAVectorEnv` (one retriever
            call per turn for the whole batch). Its protocol must be ``args.protocol``.
        train_dataset: rows with a ``question_index`` column into ``env.unwrapped.items`` (default: every question).
        env_factory: callable returning a fresh env for one rollout (default: `clone_env` of ``env``, which shares
            its corpus and retriever).
        quantization_config: a ``BitsAndBytesConfig`` for a model given by name (``--load_in_4bit`` / ``--load_in_8bit``
            in ``igpo-train``), passed to `GRPOTrainer`.
        Other arguments are passed to `GRPOTrainer`.
    """

    _tag_names = ["trl", "grpo", "igpo"]
    _name = "IGPO"

    def __init__(
        self,
        model,
        args: IGPOConfig | None = None,
        env=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        env_factory=None,
        callbacks=None,
        optimizers=(None, None),
        peft_config=None,
        quantization_config=None,
    ):
        if args is None:
            raise ValueError("IGPOTrainer needs an IGPOConfig (args=IGPOConfig(...))")
        if not isinstance(args, IGPOConfig):
            raise TypeError(f"args must be an IGPOConfig, got {type(args).__name__}")
        self.env = env if env is not None else make_env(args)
        env_protocol = getattr(self.env.unwrapped, "protocol", None)
        if env_protocol != args.protocol:
            raise ValueError(
                f"the env speaks protocol {env_protocol!r} but args.protocol is {args.protocol!r}: turns would stop at "
                f"the wrong closing tags and beliefs be probed in the wrong format; build the env with "
                f"protocol={args.protocol!r} (as make_env(args) does) or set IGPOConfig(protocol={env_protocol!r})"
            )
        self._env_factory = env_factory or (lambda: clone_env(self.env))
        self._env_pool = [self.env.unwrapped]
        self._rollout_envs: SearchQAVectorEnv | None = None
        if train_dataset is None:
            train_dataset = question_dataset(self.env)
        if QUESTION_COLUMN not in train_dataset.column_names:
            raise ValueError(
                f"train_dataset needs a {QUESTION_COLUMN!r} column (indices into env.unwrapped.items); "
                f"it has {train_dataset.column_names}"
            )
        if args.use_vllm:  # vLLM stops a turn at the protocol's closing tags through its SamplingParams
            args.generation_kwargs = vllm_generation_kwargs(args.protocol, args.generation_kwargs)
        if processing_class is None and isinstance(model, (str, Path)) and Path(model).is_dir():
            processing_class = load_tokenizer(model)  # a local tokenizer as saved (e.g. igpo_trainer.tiny's word level)
        self._rollout_rows: list[dict] = []
        self._ig_seconds: float | None = None
        self._warned_nonfinite = False  # a non-finite reward is reported once per run (and counted every step)
        #: Question indices of the last `ROLLOUT_HISTORY` rollout batches, oldest first (data-order checks).
        self.rollout_history: list[list[int]] = []
        super().__init__(
            model=model,
            reward_funcs=[outcome_reward],
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
            peft_config=peft_config,
            quantization_config=quantization_config,
            rollout_func=self._rollout,
        )

    # ---------------------------------------------------------------------------------------------------------------
    # Rollout (TRL's rollout_func hook)
    # ---------------------------------------------------------------------------------------------------------------
    def _rollout_env(self, n: int) -> SearchQAVectorEnv:
        """The vector env the rollouts of a batch step through: ``n`` sub-envs from the pool (grown with
        ``env_factory`` when a batch needs more), autoreset disabled so finished episodes are left alone."""
        while len(self._env_pool) < n:
            self._env_pool.append(self._env_factory().unwrapped)
        if self._rollout_envs is None or self._rollout_envs.num_envs != n:
            self._rollout_envs = SearchQAVectorEnv.from_envs(self._env_pool[:n], autoreset_mode=AutoresetMode.DISABLED)
        return self._rollout_envs

    def _sync_live(self, any_live: bool) -> bool:
        """Whether any process still has live episodes (all processes must make the same vLLM-server calls)."""
        if self.accelerator.num_processes == 1 or not self.use_vllm:
            return any_live
        flags = torch.tensor([float(any_live)], device=self.accelerator.device)
        return bool(self.accelerator.gather(flags).sum().item() > 0)

    def _rollout(self, prompts: list, trainer) -> dict[str, Any]:
        args: IGPOConfig = self.args
        rows = self._rollout_rows
        if len(rows) != len(prompts):
            raise RuntimeError(f"rollout got {len(prompts)} prompts but {len(rows)} dataset rows")
        indices = [int(row[QUESTION_COLUMN]) for row in rows]
        self.rollout_history.append(indices)
        del self.rollout_history[:-ROLLOUT_HISTORY]
        envs = self._rollout_env(len(indices))
        tokenizer = getattr(self, "_tokenizer", None) or self.processing_class
        play = partial(
            run_episodes,
            envs,
            indices,
            tokenizer=tokenizer,
            max_turns=args.max_turns,
            max_turn_length=args.turn_length,
            max_completion_length=args.max_completion_length,
            eos_token_id=tokenizer.eos_token_id,
            sync=self._sync_live,
            system_prompt=args.system_prompt_text,
            force_think=args.force_think,
        )
        episodes = play(VLLMTurnGenerator(self)) if self.use_vllm else None
        timer = Timer()
        # The training model generates (transformers backend) and, in every backend, scores the beliefs: it is the
        # policy at rollout time (vLLM holds the same weights).
        with (
            unwrap_model_for_generation(
                self.model_wrapped,
                self.accelerator,
                gather_deepspeed3_params=args.ds3_gather_for_generation,
                generation_kwargs=None if self.use_vllm else self.generation_kwargs,
            ) as model,
            torch.no_grad(),
        ):
            if episodes is None:
                stop = STOP_STRINGS[args.protocol]
                episodes = play(HFTurnGenerator(model, tokenizer, self.generation_config, stop, self.eos_token_ids))
            beliefs = None
            if args.use_information_gain:
                with timer:
                    beliefs = score_beliefs(
                        model, tokenizer, episodes, protocol=args.protocol, probe_style=args.probe_style,
                        turn_opening=THINK_OPEN if args.force_think else "",
                    )
        assign_turn_rewards(episodes, beliefs, info_gain_type=args.info_gain_type, ig_clip=args.ig_clip)
        self._ig_seconds = timer.seconds
        logprobs = None
        if any(e.logprobs is not None for e in episodes):
            logprobs = [e.logprobs or [0.0] * len(e.completion_ids) for e in episodes]
        return {
            "prompt_ids": [e.prompt_ids for e in episodes],
            "completion_ids": [e.completion_ids for e in episodes],
            "logprobs": logprobs,
            "env_mask": [e.env_mask for e in episodes],
            "igpo_outcome": [e.outcome for e in episodes],
            "igpo_turn_rewards": [e.turn_rewards for e in episodes],
            "igpo_token_turn": [e.token_turn for e in episodes],
            "igpo_metrics": [episode_metrics([e]) for e in episodes],
        }

    # ---------------------------------------------------------------------------------------------------------------
    # Advantages: (B,) sequence advantages -> (B, T) turn advantages
    # ---------------------------------------------------------------------------------------------------------------
    def _generate_and_score_completions(self, inputs):
        self._rollout_rows = inputs
        output = super()._generate_and_score_completions(inputs)  # merges the rollout's extra fields into `inputs`
        mode = "train" if self.model.training else "eval"
        num_generations = self.num_generations if mode == "train" else self.num_generations_eval
        args: IGPOConfig = self.args

        # Groups may straddle processes: normalise over the gathered batch, keep this process's slice.
        all_rewards = gather_object([row["igpo_turn_rewards"] for row in inputs])
        nonfinite = sum(not all(math.isfinite(r) for r in turns) for turns in all_rewards)
        if args.use_information_gain:
            output["advantages"] = self._turn_advantages(inputs, output, all_rewards, num_generations)
        # else: TRL's GRPO advantages, (B,) from the outcome reward, exactly as TRL computed them
        zero = (output["advantages"].reshape(len(inputs), -1).abs() < 1e-8).all(dim=1)
        collapsed = self.accelerator.gather(zero).reshape(-1, num_generations).all(dim=1).float().mean().item()

        self._log_episode_metrics(mode, gather_object([row["igpo_metrics"] for row in inputs]), collapsed)
        self._log_robustness(mode, output, nonfinite)
        return output

    def _turn_advantages(self, inputs, output, all_rewards, num_generations) -> torch.Tensor:
        """(B, T) IGPO advantages: group-normalised turn rewards, discounted, broadcast to each turn's tokens."""
        args: IGPOConfig = self.args
        weight = float(self.reward_weights[0])  # TRL's reward_weights weigh the one reward function, the outcome
        weighted = [list(turns[:-1]) + [turns[-1] * weight] for turns in all_rewards]
        all_advantages, _ = group_turn_advantages(
            weighted, num_generations, gamma=args.gamma, norm=args.info_gain_norm, std_floor=args.adv_std_floor,
            scale=args.scale_rewards != "none",
        )
        start = self.accelerator.process_index * len(inputs)
        local = all_advantages[start : start + len(inputs)]
        advantages = torch.zeros((len(inputs), output["completion_ids"].size(1)), dtype=torch.float32)
        for row, (record, turn_advs) in enumerate(zip(inputs, local, strict=True)):
            per_token = broadcast_turn_advantages(record["igpo_token_turn"], turn_advs)
            advantages[row, : len(per_token)] = torch.tensor(per_token, dtype=torch.float32)
        return advantages.to(output["completion_ids"].device)

    def _log_robustness(self, mode: str, output, nonfinite: int) -> None:
        """Count rollouts skipped for a non-finite reward (warn once) and sequences vLLM's IS correction drops."""
        metrics = self._metrics[mode]
        metrics["igpo/nonfinite_reward_rollouts"].append(float(nonfinite))
        if nonfinite and not self._warned_nonfinite:
            self._warned_nonfinite = True
            warnings.warn(
                f"{nonfinite} rollout(s) of this batch have a non-finite reward (NaN/inf outcome or information "
                "gain); they get zero advantage and are left out of their group's statistics. Counted in "
                "igpo/nonfinite_reward_rollouts; this warning is shown once.",
                RuntimeWarning,
                stacklevel=2,
            )
        if "importance_sampling_ratio" in output:
            mask = output["completion_mask"] * output.get("tool_mask", torch.ones_like(output["completion_mask"]))
            counts = torch.tensor(dropped_sequences(output["importance_sampling_ratio"], mask), device=mask.device)
            dropped, trained = self.accelerator.gather(counts.reshape(1, 2)).sum(dim=0).tolist()
            metrics["igpo/vllm_is_dropped_seqs"].append(float(dropped))
            metrics["igpo/vllm_is_dropped_frac"].append(dropped / max(1, trained))

    def _log_episode_metrics(self, mode: str, per_episode: list[dict], collapsed: float) -> None:
        metrics = self._metrics[mode]
        merged: dict[str, list[float]] = {}
        for record in per_episode:
            for key, values in record.items():
                merged.setdefault(key, []).extend(values)
        for key in ("f1", "em", "turns", "searches", "format_error", "gold_recall"):
            values = [v for v in merged.get(key, []) if not math.isnan(v)]
            if values:
                metrics[f"igpo/{key}"].append(sum(values) / len(values))
        gains = merged.get("info_gain", [])
        if self.args.use_information_gain:
            metrics["igpo/info_gain_per_search"].append(sum(gains) / len(gains) if gains else 0.0)
        metrics["igpo/zero_adv_group_frac"].append(collapsed)

    def training_step(self, model, inputs, num_items_in_batch):
        start = time.perf_counter()
        self._ig_seconds = None
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self._ig_seconds is not None and self.args.use_information_gain:  # this step generated a rollout batch
            self._metrics["train"]["igpo/ig_time_share"].append(self._ig_seconds / (time.perf_counter() - start))
        return loss
