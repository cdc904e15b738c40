"""Built-in reference agents: floors and ceilings for `igpo-eval` tables.

- ``random``: random protocol-valid or invalid turns (seeded): the floor every learned agent must beat.
- ``search-question``: searches the question once, then answers with the title of the top passage.
- ``oracle``: issues the gold queries in order, then answers with the gold answer (reads the gold from the bound
  env's items, never from observations): the ceiling of the retriever + task.

Agents see ``(observation, info)``; ``bind(env)`` (called by the runner) lets them read the protocol and, for the
oracle, the questions' gold annotations.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

from igpo_envs.types import QAItem

# The top title in either observation layout: `Doc 1 (Title: Paris (band)) ...` or `Doc 1(Title: "Paris (band)") ...`.
_TOP_TITLE = re.compile(r'Doc 1 ?\(Title: "?(.*?)"?\) ')


def search_text(query: str, protocol: str) -> str:
    """A search turn in the given protocol."""
    if protocol == "tool_call":
        return "<tool_call>" + json.dumps({"name": "search", "arguments": {"query": query}}) + "</tool_call>"
    return f"<search> {query} </search>"


def answer_text(answer: str) -> str:
    return f"<answer> {answer} </answer>"


class _BoundAgent:
    protocol = "tag"

    def bind(self, env: Any) -> None:
        """Read the protocol (and, for agents that need it, the questions) from a single or vector env."""
        self.protocol = getattr(env.unwrapped, "protocol", "tag")


class RandomAgent(_BoundAgent):
    """Random turns: a search or an answer made of words from the observation, or malformed text. Seeded."""

    def __init__(self, seed: int | str = 0, p_invalid: float = 0.2, p_answer: float = 0.4):
        self.rng = random.Random(int(seed))
        self.p_invalid, self.p_answer = float(p_invalid), float(p_answer)

    def act(self, observation: str, info: dict[str, Any]) -> str:
        words = re.findall(r"\w+", observation) or ["nothing"]
        phrase = " ".join(self.rng.choice(words) for _ in range(self.rng.randint(1, 4)))
        roll = self.rng.random()
        if roll < self.p_invalid:
            return self.rng.choice([phrase, f"<search> {phrase}", "<answer></answer>", f"<answer>{phrase}</search>"])
        if roll < self.p_invalid + self.p_answer:
            return answer_text(phrase)
        return search_text(phrase, self.protocol)


class SearchQuestionAgent(_BoundAgent):
    """Searches the question verbatim once, then answers with the title of the top passage (``unknown`` if none)."""

    def act(self, observation: str, info: dict[str, Any]) -> str:
        if info.get("num_searches", 0) == 0:
            return search_text(info["question"], self.protocol)
        match = _TOP_TITLE.search(observation)
        return answer_text(match.group(1) if match else "unknown")


def oracle_queries(item: QAItem) -> list[str]:
    """The gold query sequence: the synthetic world's ``metadata["oracle_queries"]``, else the gold titles."""
    queries = item.metadata.get("oracle_queries")
    if queries:
        return [str(q) for q in queries]
    return list(item.gold_titles)


class OracleAgent(_BoundAgent):
    """Issues the gold queries in order, then answers with the first gold answer.

    Needs ``bind(env)``: it looks the current question up by ``info["question_id"]`` in ``env.unwrapped.items``.
    """

    def __init__(self) -> None:
        self.items: dict[str, QAItem] = {}

    def bind(self, env: Any) -> None:
        super().bind(env)
        self.items = {item.id: item for item in env.unwrapped.items}

    def act(self, observation: str, info: dict[str, Any]) -> str:
        if not self.items:
            raise RuntimeError("OracleAgent needs bind(env) before act() (igpo-eval's evaluate() calls it)")
        item = self.items[info["question_id"]]
        queries = oracle_queries(item)
        done = info.get("num_searches", 0)
        if done < len(queries):
            return search_text(queries[done], self.protocol)
        return answer_text(item.golden_answers[0])
