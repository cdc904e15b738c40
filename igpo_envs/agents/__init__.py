"""Agents for `igpo-eval`: the agent protocol, its registry, and the built-in reference agents."""

from igpo_envs.agents.base import Agent, act_batch, agent_names, make_agent, register_agent
from igpo_envs.agents.builtin import OracleAgent, RandomAgent, SearchQuestionAgent

register_agent("random", RandomAgent)
register_agent("search-question", SearchQuestionAgent)
register_agent("oracle", OracleAgent)

from igpo_envs.agents import llm  # noqa: E402,F401  (registers hf:<model> and openai:<model>)

__all__ = ["Agent", "OracleAgent", "RandomAgent", "SearchQuestionAgent", "act_batch", "agent_names", "make_agent",
           "register_agent"]
