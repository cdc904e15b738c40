"""Use the igpo envs from plain TRL: an adapter for `GRPOTrainer(environment_factory=...)`.

TRL's ``environment_factory`` turns every public method of an environment class into a tool the model calls with
JSON tool calls (rendered by the model's chat template), calls ``reset(**row)`` before each rollout, and, when the class
defines ``get_reward()``, uses it as the rollout's reward. `IGPOToolEnv` exposes an igpo env that way:

* ``reset(question_index=..., **row)`` starts an episode on that question and returns the task text, which TRL appends
  to the row's user message;
* ``search(query)`` runs one env turn (a ``search`` tool call in the env's ``tool_call`` protocol) and returns the
  passages;
* ``answer(answer)`` ends the episode; ``get_reward()`` returns its outcome reward (answer F1, or the env's format
  penalty if the rollout never answered).

Example (plain TRL, no igpo trainer; the chat template must support tool calls, e.g. Qwen2.5's)::

    from trl import GRPOConfig, GRPOTrainer
    from igpo_trainer.trl_env import IGPOToolEnv, tool_env_dataset

    factory = IGPOToolEnv.factory("igpo/SynthMultiHop-v0", num_docs=200, hops=2, seed=0)
    trainer = GRPOTrainer(
        model="Qwen/Qwen2.5-0.5B-Instruct",
        args=GRPOConfig(output_dir="out", max_completion_length=512, max_tool_calling_iterations=4),
        train_dataset=tool_env_dataset(factory().env),
        environment_factory=factory,
    )
    trainer.train()

The rollout is TRL's own (one tool call loop per turn); information gain is not computed on this path — use
`igpo_trainer.IGPOTrainer` for IGPO. This adapter gives the same questions, retriever, F1 and format rules.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from igpo_envs.transcript import tool_message_content

TASK_TEXT = (
    "Answer the question below. Use the search tool to look up what you do not know; call it as often as you need. "
    "When you know the answer, call the answer tool with a short answer.\nQuestion: {question}"
)


class IGPOToolEnv:
    """An igpo env as a TRL ``environment_factory`` environment: ``search`` and ``answer`` tools, env-owned reward.

    Args:
        env: an igpo env (from ``gym.make("igpo/...", protocol="tool_call", ...)``); it is driven with the
            ``tool_call`` protocol, whatever the model's own tool-call syntax is (TRL parses that).
    """

    def __init__(self, env):
        self.env = env
        self._reward: float | None = None
        self._done = True

    @classmethod
    def factory(cls, env_id: str = "igpo/SynthMultiHop-v0", **env_kwargs) -> Callable[[], IGPOToolEnv]:
        """A zero-argument factory for TRL: the first call builds the env, later calls get independent copies of it
        that share its corpus and retriever (one per concurrent rollout)."""
        from igpo_trainer.trainer import clone_env, make_env_from_id

        base = []

        def make() -> IGPOToolEnv:
            if not base:
                base.append(make_env_from_id(env_id, **{**env_kwargs, "protocol": "tool_call"}))
                return cls(base[0])
            return cls(clone_env(base[0]))

        return make

    # ---- TRL hooks (not tools) ----
    def reset(self, question_index: int | None = None, **row) -> str:
        """Start an episode on ``question_index`` (a dataset column); returns the task text for the user message."""
        options = {} if question_index is None else {"question_index": int(question_index)}
        self.env.reset(options=options)
        self._reward, self._done = None, False
        return TASK_TEXT.format(question=self.env.unwrapped.item.question)

    def get_reward(self) -> float:
        """The episode's outcome: answer F1 (the env's reward), or the format penalty if it never answered."""
        return self._reward if self._reward is not None else float(self._format_penalty())

    # ---- tools ----
    def search(self, query: str) -> str:
        """Search the knowledge corpus for passages relevant to a query.

        Args:
            query: The search query, a few keywords or a question.

        Returns:
            The top passages, one per line, each with its title.
        """
        if self._done:
            return "The episode is over; no more searches."
        call = json.dumps({"name": "search", "arguments": {"query": query}})
        observation = self._step(f"<tool_call>{call}</tool_call>")
        return tool_message_content(observation)

    def answer(self, answer: str) -> str:
        """Submit the final answer to the question. Call it once, when you know the answer.

        Args:
            answer: The answer, as short as possible (a name, a date, a place).

        Returns:
            A confirmation that the answer was recorded.
        """
        if self._done:
            return "The episode is over; the answer was not recorded."
        self._step(f"<answer> {answer} </answer>")
        return "Answer recorded."

    # ---- helpers (private: TRL exposes every public method as a tool) ----
    def _step(self, action: str) -> str:
        observation, reward, terminated, truncated, info = self.env.step(action)
        if terminated or truncated:
            self._done, self._reward = True, float(reward)
        return observation

    def _format_penalty(self) -> float:
        return float(getattr(self.env.unwrapped, "format_penalty", -2.0))


def tool_env_dataset(env, indices=None, *, repeat: int = 1):
    """A TRL train dataset for `IGPOToolEnv`: an empty user message per question plus its ``question_index``."""
    from datasets import Dataset

    n = len(env.unwrapped.items)
    indices = list(range(n)) if indices is None else [int(i) for i in indices]
    bad = [i for i in indices if not 0 <= i < n]
    if bad:
        raise ValueError(f"question indices {bad[:5]} out of range: the env has {n} questions")
    indices = indices * repeat
    return Dataset.from_dict(
        {"prompt": [[{"role": "user", "content": ""}] for _ in indices], "question_index": indices}
    )
