"""LLM agents for `igpo-eval`: a local transformers model and any OpenAI-compatible chat-completions endpoint.

Both read the env's chat history from ``info["messages"]`` and stop generating at the end of an action
(``</search>``, ``</answer>``, ``</tool_call>``, ``</browse>``), returning the turn text up to and including it
(`HFAgent`: up to the end of the token that completes it, exactly the turn an ``igpo-train`` rollout records).

* ``--agent hf:<model dir or hub id>`` → `HFAgent`: the tokenizer's chat template, greedy (``temperature=0``) or
  sampled, episodes batched together with left padding.
* ``--agent openai:<model> --base-url http://127.0.0.1:8000/v1`` → `OpenAIChatAgent`:
  ``POST {base_url}/chat/completions`` over `requests` (vLLM, SGLang, llama.cpp server, ``transformers serve``,
  hosted APIs), the API key from an environment variable, bounded retries with backoff on 429/5xx, episodes sent
  concurrently.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from igpo_envs.agents.base import register_agent
from igpo_envs.hf_tokenizer import generated_turn, load_tokenizer, stopping_kwargs
from igpo_envs.protocol import THINK_OPEN
from igpo_envs.transcript import render_messages, transcript_text, turn_ids

#: Closing tags that end a turn's action, in both protocols. OpenAI-style APIs accept at most four stop sequences.
ACTION_STOPS = ("</search>", "</answer>", "</tool_call>", "</browse>")
_OPENING = {stop: stop.replace("</", "<", 1) for stop in ACTION_STOPS}


class AgentError(RuntimeError):
    """An LLM agent could not produce a turn (endpoint unreachable, HTTP error, malformed response)."""


def cut_at_stop(text: str, stops: Sequence[str] = ACTION_STOPS) -> str:
    """``text`` up to and including the first stop string (generation may run past it in a batch)."""
    ends = [text.find(s) + len(s) for s in stops if s in text]
    return text[: min(ends)] if ends else text


def close_stopped_action(text: str, stops: Sequence[str] = ACTION_STOPS) -> str:
    """Re-append the stop string a server stripped: OpenAI-style APIs return the text *before* the stop sequence."""
    cut = cut_at_stop(text, stops)
    if cut != text or any(cut.endswith(s) for s in stops):
        return cut
    last = max(stops, key=lambda s: text.rfind(_OPENING[s]))
    if text.rfind(_OPENING[last]) >= 0 and text.count(_OPENING[last]) > text.count(last):
        return text + last
    return text


def _messages(observation: str, info: dict[str, Any], agent: str) -> list[dict[str, str]]:
    messages = info.get("messages") if isinstance(info, dict) else None
    if not messages:
        keys = sorted(info) if isinstance(info, dict) else type(info).__name__
        raise ValueError(f"{agent} needs info['messages'] (the env's chat history so far); got info keys {keys}")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


TRANSCRIPTS = ("chat", "inline")


class HFAgent:
    """A local causal LM (transformers) as an agent.

    Args:
        model_path: a local model directory (or a hub id where a hub is reachable).
        max_new_tokens: generation budget per turn.
        temperature: 0 for greedy decoding; > 0 samples with this temperature (with ``top_p``, no top-k cut).
        batch_size: episodes generated together in `act_batch` (left-padded).
        device: torch device, e.g. ``"cpu"`` or ``"cuda"``.
        dtype: torch dtype name for loading (``"auto"`` keeps the checkpoint's).
        stop: strings that end a turn.
        seed: seeds torch for reproducible sampling.
        chat_template_kwargs: extra arguments for ``apply_chat_template`` (e.g. ``{"enable_thinking": False}``).
        transcript: how the episode so far is shown to the model. ``"chat"``: one chat message per turn (for
            instruct models). ``"inline"``: the layout ``igpo-train`` rollouts use (the chat-templated prompt, then
            the agent's turns and the observations as one running assistant message, every piece tokenised on its
            own: `igpo_envs.transcript`) — use it for models trained with igpo; it feeds the same token ids.
        force_think: write ``<think>`` at the start of every turn before the model generates, as ``igpo-train``
            rollouts do with ``force_think: true`` (the returned turn text starts with it; ``"inline"`` only).
    """

    def __init__(
        self,
        model_path: str,
        *,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        top_p: float = 1.0,
        batch_size: int = 8,
        device: str = "cpu",
        dtype: str = "auto",
        stop: Sequence[str] = ACTION_STOPS,
        seed: int | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
        transcript: str = "chat",
        force_think: bool = False,
    ):
        import torch
        from transformers import AutoModelForCausalLM

        if transcript not in TRANSCRIPTS:
            raise ValueError(f"transcript must be one of {TRANSCRIPTS}, got {transcript!r}")
        self.transcript = transcript
        if force_think and transcript != "inline":
            raise ValueError("force_think needs transcript='inline' (the igpo-train layout it comes from)")
        self.turn_opening = THINK_OPEN if force_think else ""
        if max_new_tokens < 1 or batch_size < 1 or temperature < 0:
            raise ValueError("max_new_tokens and batch_size must be >= 1 and temperature >= 0")
        self.model_path = str(model_path)
        try:
            self.tokenizer = load_tokenizer(self.model_path)
            self.model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=dtype).to(device)
        except OSError as exc:
            raise AgentError(f"cannot load a transformers model from {self.model_path!r}: {exc}") from None
        if self.tokenizer.chat_template is None:
            raise AgentError(f"the tokenizer of {self.model_path!r} has no chat template; HFAgent needs one")
        self.tokenizer.padding_side = "left"  # generation continues on the right
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.eval()
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.batch_size, self.device, self.stop = batch_size, device, tuple(stop)
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        if seed is not None:
            torch.manual_seed(seed)

    def prompt(self, observation: str, info: dict[str, Any]) -> str:
        """The prompt for the next turn as text (see ``transcript``; the model is fed `context_ids`)."""
        messages = _messages(observation, info, "HFAgent")
        if self.transcript == "inline":
            return transcript_text(self.tokenizer, messages, **self.chat_template_kwargs) + self.turn_opening
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, **self.chat_template_kwargs
        )

    def context_ids(self, observation: str, info: dict[str, Any]) -> list[int]:
        """The token ids the model is fed for the next turn. ``"inline"``: `igpo_envs.transcript.render_messages`,
        token for token what ``igpo-train`` rollouts build (every piece tokenised on its own); ``"chat"``: the chat
        template over the messages."""
        messages = _messages(observation, info, "HFAgent")
        if self.transcript == "inline":
            opening = turn_ids(self.tokenizer, self.turn_opening) if self.turn_opening else []
            rendered = render_messages(self.tokenizer, messages, turn_opening=self.turn_opening,
                                       **self.chat_template_kwargs)
            return rendered.ids + opening
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, **self.chat_template_kwargs
        )
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def act(self, observation: str, info: dict[str, Any]) -> str:
        return self.act_batch([observation], [info])[0]

    def act_batch(self, observations: Sequence[str], infos: Sequence[dict[str, Any]]) -> list[str]:
        contexts = [self.context_ids(o, i) for o, i in zip(observations, infos)]
        # Similar lengths share a batch, so little compute goes to padding.
        order = sorted(range(len(contexts)), key=lambda i: len(contexts[i]))
        outputs: list[str] = [""] * len(contexts)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            for i, text in zip(chunk, self._generate([contexts[i] for i in chunk])):
                outputs[i] = text
        return outputs

    def _generate(self, contexts: list[list[int]]) -> list[str]:
        """One left-padded ``generate`` call; each row's turn ends right after its first stop (as in training:
        `igpo_envs.hf_tokenizer.stopping_kwargs` and `generated_turn`) and is decoded without special tokens."""
        import torch

        width = max(len(c) for c in contexts)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(contexts), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(contexts), width), dtype=torch.long)
        for row, ids in enumerate(contexts):
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids):] = 1
        sampling = {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": 0}
        eos = self.model.generation_config.eos_token_id
        eos = [self.tokenizer.eos_token_id] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        with torch.no_grad():
            generated = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention_mask.to(self.device),
                max_new_tokens=self.max_new_tokens,
                **stopping_kwargs(self.tokenizer, self.stop, eos),
                pad_token_id=pad,
                **(sampling if self.temperature > 0 else {"do_sample": False}),
            )
        rows = generated[:, width:].cpu().tolist()
        turns = [generated_turn(self.tokenizer, row, self.stop, eos, pad) for row in rows]
        return [self.turn_opening + self.tokenizer.decode(ids, skip_special_tokens=True) for ids in turns]


class OpenAIChatAgent:
    """Any OpenAI-compatible chat-completions endpoint as an agent (``POST {base_url}/chat/completions``).

    Args:
        model: the model name the server expects (for ``transformers serve``, the path or id it loaded).
        base_url: the API root including its version prefix, e.g. ``http://127.0.0.1:8000/v1``.
        api_key_env: environment variable holding the API key; when unset no Authorization header is sent (local
            servers usually need none).
        max_new_tokens: ``max_tokens`` per turn. temperature: 0 = greedy. top_p: nucleus sampling.
        timeout: seconds per request. max_retries / backoff / max_wait: retries of 429/5xx/connection errors with
            exponential backoff (``Retry-After`` honoured, waits capped at ``max_wait``).
        max_workers: episodes requested concurrently in `act_batch`.
        stop: stop sequences (at most four for OpenAI's API).
        extra_body: extra JSON fields merged into every request (e.g. ``{"seed": 0}``).
    """

    def __init__(
        self,
        model: str,
        base_url: str = "http://127.0.0.1:8000/v1",
        *,
        api_key_env: str = "OPENAI_API_KEY",
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        top_p: float | None = None,
        timeout: float = 120.0,
        max_retries: int = 3,
        backoff: float = 1.0,
        max_wait: float = 60.0,
        max_workers: int = 4,
        stop: Sequence[str] = ACTION_STOPS,
        extra_body: dict[str, Any] | None = None,
    ):
        from igpo_envs.search.web_search import retrying_session

        if not model:
            raise ValueError("OpenAIChatAgent needs a model name (e.g. --agent openai:<model>)")
        self.model = model
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.api_key_env = api_key_env
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.timeout, self.max_retries, self.max_workers = timeout, max_retries, max_workers
        self.stop = tuple(stop)
        self.extra_body = dict(extra_body or {})
        self.session = retrying_session(max_retries, backoff, max_wait, methods=("POST",))
        if api_key := os.environ.get(api_key_env, "").strip():
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def request_body(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "stop": list(self.stop),
            "stream": False,
        }
        if self.top_p is not None:
            body["top_p"] = self.top_p
        return {**body, **self.extra_body}

    def act(self, observation: str, info: dict[str, Any]) -> str:
        messages = _messages(observation, info, "OpenAIChatAgent")
        try:
            response = self.session.post(self.url, json=self.request_body(messages), timeout=self.timeout)
        except requests.RequestException as exc:
            raise AgentError(
                f"cannot reach the chat endpoint {self.url} (after {self.max_retries} retries): {exc}. "
                "Is the server running and is --base-url right (it includes the /v1 prefix)?"
            ) from None
        if response.status_code != 200:
            hint = f" (set ${self.api_key_env})" if response.status_code in (401, 403) else ""
            raise AgentError(f"{self.url} answered HTTP {response.status_code}{hint}: {response.text[:500]}")
        return self._turn_text(response)

    def _turn_text(self, response: requests.Response) -> str:
        try:
            choice = response.json()["choices"][0]
            message = choice["message"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise AgentError(f"{self.url} returned no chat completion: {response.text[:500]}") from None
        text = message.get("content") or ""
        # Servers that parse tool calls (vLLM, transformers serve with Qwen templates) move them out of the content;
        # the env reads the tool_call protocol from text, so put them back.
        for call in message.get("tool_calls") or []:
            function = call.get("function", {})
            arguments = function.get("arguments", {})
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments)
                except json.JSONDecodeError:
                    pass
            payload = json.dumps({"name": function.get("name"), "arguments": arguments}, ensure_ascii=False)
            text += f"<tool_call>{payload}</tool_call>"
        return close_stopped_action(text, self.stop)

    def act_batch(self, observations: Sequence[str], infos: Sequence[dict[str, Any]]) -> list[str]:
        if len(observations) <= 1:
            return [self.act(o, i) for o, i in zip(observations, infos)]
        with ThreadPoolExecutor(max_workers=min(self.max_workers, len(observations))) as pool:
            return list(pool.map(self.act, observations, infos))


def _drop_unset(kwargs: dict[str, Any]) -> dict[str, Any]:
    """CLI flags left at None mean 'use the agent's default'."""
    return {k: v for k, v in kwargs.items() if v is not None}


def make_hf_agent(model_path: str | None = None, **kwargs: Any) -> HFAgent:
    if not model_path:
        raise ValueError("the hf agent needs a model: --agent hf:/path/to/model")
    kwargs.pop("base_url", None)  # an endpoint flag; meaningless for a local model
    return HFAgent(model_path, **_drop_unset(kwargs))


def make_openai_agent(model: str | None = None, **kwargs: Any) -> OpenAIChatAgent:
    if not model:
        raise ValueError("the openai agent needs a model name: --agent openai:<model> --base-url http://host:port/v1")
    for local_only in ("device", "batch_size", "dtype"):
        kwargs.pop(local_only, None)
    return OpenAIChatAgent(model, **_drop_unset(kwargs))


def add_agent_arguments(parser) -> None:
    """The ``igpo-eval`` flags of the LLM agents (left unset, each agent keeps its default)."""
    group = parser.add_argument_group("LLM agents (--agent hf:<model dir> or --agent openai:<model>)")
    group.add_argument("--base-url", default=None, metavar="URL",
                       help="OpenAI-compatible API root for openai:<model>, e.g. http://127.0.0.1:8000/v1")
    group.add_argument("--api-key-env", default=None, metavar="VAR",
                       help="environment variable holding the endpoint's API key (default OPENAI_API_KEY)")
    group.add_argument("--max-new-tokens", type=int, default=None, help="generation budget per turn (default 512)")
    group.add_argument("--temperature", type=float, default=None, help="0 = greedy (default); > 0 samples")
    group.add_argument("--device", default=None, help="torch device for hf:<model> (default cpu)")
    group.add_argument("--transcript", default=None, choices=TRANSCRIPTS,
                       help="hf:<model>: 'chat' (a message per turn, default) or 'inline' (the igpo-train layout)")
    group.add_argument("--force-think", action="store_true", default=None,
                       help="hf:<model> with --transcript inline: write <think> at the start of every turn, as "
                            "igpo-train does with force_think: true")
    group.add_argument("--concurrency", type=int, default=None,
                       help="parallel requests of openai:<model> (default 4)")


def agent_kwargs(spec: str, args) -> dict[str, Any]:
    """Keyword arguments for `make_agent` from parsed ``igpo-eval`` flags; {} for agents other than hf/openai."""
    name = spec.partition(":")[0]
    common = {"max_new_tokens": getattr(args, "max_new_tokens", None),
              "temperature": getattr(args, "temperature", None)}
    if name == "hf":
        return _drop_unset({**common, "device": getattr(args, "device", None),
                            "transcript": getattr(args, "transcript", None),
                            "force_think": getattr(args, "force_think", None),
                            "batch_size": getattr(args, "batch_size", None)})
    if name == "openai":
        return _drop_unset({**common, "base_url": getattr(args, "base_url", None),
                            "api_key_env": getattr(args, "api_key_env", None),
                            "max_workers": getattr(args, "concurrency", None)})
    return {}


register_agent("hf", make_hf_agent)
register_agent("openai", make_openai_agent)
