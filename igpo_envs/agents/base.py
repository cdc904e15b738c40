"""The agent protocol `igpo-eval` drives, and the registry that maps ``--agent`` specs to agents."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Agent(Protocol):
    """Anything that maps an observation (and the env's ``info``) to the text of its next turn.

    Agents see the observation text and ``info`` (chat ``messages`` so far, turn, ...), never the gold answer.
    ``act_batch`` lets batched agents (LLMs) serve many episodes with one call; it defaults to a loop.
    """

    def act(self, observation: str, info: dict[str, Any]) -> str: ...


def act_batch(agent: Agent, observations: Sequence[str], infos: Sequence[dict[str, Any]]) -> list[str]:
    """Call the agent's own ``act_batch`` when it has one, else ``act`` once per episode."""
    batched = getattr(agent, "act_batch", None)
    if batched is not None:
        return list(batched(observations, infos))
    return [agent.act(obs, info) for obs, info in zip(observations, infos)]


AgentFactory = Callable[..., Agent]
_REGISTRY: dict[str, AgentFactory] = {}


def register_agent(name: str, factory: AgentFactory) -> None:
    """Register ``factory`` for ``--agent name`` or ``--agent name:<argument>`` (e.g. ``hf:/path/to/model``)."""
    _REGISTRY[name] = factory


def make_agent(spec: str, **kwargs: Any) -> Agent:
    """Build an agent from a spec ``name`` or ``name:argument``; kwargs go to the factory."""
    name, _, argument = spec.partition(":")
    if name not in _REGISTRY:
        raise ValueError(f"unknown agent {spec!r}; known agents: {sorted(_REGISTRY)}")
    return _REGISTRY[name](argument, **kwargs) if argument else _REGISTRY[name](**kwargs)


def agent_names() -> list[str]:
    return sorted(_REGISTRY)
