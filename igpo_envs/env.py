"""`SearchQAEnv`: the multi-turn search question-answering environment, and `step_batch`, its batched step."""

from __future__ import annotations

import copy
import multiprocessing
import re
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.error import ResetNeeded
from gymnasium.vector.utils import create_shared_memory, read_from_shared_memory, write_to_shared_memory

from igpo_envs.arguments import finite_number, integer
from igpo_envs.metrics import exact_match, f1_score
from igpo_envs.protocol import (
    MAX_ACTION_CHARS,
    OBSERVATION_LAYOUTS,
    PROTOCOLS,
    TOOLS,
    Action,
    format_observation,
    parse_action,
    render_prompt,
    wrap_result,
)
from igpo_envs.search.base import Retriever
from igpo_envs.tasks.datasets import load_questions
from igpo_envs.types import Passage, QAItem

REWARD_METRICS = {"f1": f1_score, "em": exact_match}

_new_tuple = tuple.__new__  # builds a named tuple from all its fields at C speed

#: Longest observation / action text the spaces admit (characters). Prompts plus top-k passages are far shorter.
#: (`MAX_ACTION_CHARS` lives with the parser, which refuses longer turns unread.)
MAX_OBSERVATION_CHARS = 1_000_000


def _bmp_charset() -> str:
    # Every Basic Multilingual Plane character except the surrogate block: Wikipedia text is full of non-ASCII.
    return "".join(chr(c) for c in range(0x10000) if not 0xD800 <= c <= 0xDFFF)


class UnicodeText(spaces.Text):
    """`spaces.Text` whose deep copies share the (immutable) character tables: Gymnasium's `batch_space` deep-copies
    the single space once per sub-env, which costs ~0.4 s per copy for a 63k-character charset otherwise."""

    def __deepcopy__(self, memo):
        clone = copy.copy(self)
        clone._np_random = copy.deepcopy(self._np_random, memo)
        return clone


class _SharedTexts(Sequence):
    """`AsyncVectorEnv`'s shared observation buffer for a `UnicodeText` space, read live: each access decodes what
    the workers wrote last. Gymnasium 1.4 decodes a `Text` buffer once, when the vector env is built, so with its
    default ``shared_memory=True`` every observation stayed 1,000,000 NULs. ``deepcopy`` (what ``copy=True``, the
    default, returns) gives a tuple of strings, as `SyncVectorEnv` does."""

    def __init__(self, lengths: np.ndarray, chars: np.ndarray, max_length: int):
        self._lengths, self._chars, self._max_length = lengths, chars, max_length

    def __len__(self) -> int:
        return len(self._lengths)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return tuple(self)[index]
        index = range(len(self))[index]
        start = index * self._max_length
        return self._chars[start:start + int(self._lengths[index])].tobytes().decode("utf-16-le")

    def __deepcopy__(self, memo) -> tuple[str, ...]:
        return tuple(self)

    def __eq__(self, other) -> bool:
        return tuple(self) == (tuple(other) if isinstance(other, Sequence) else other)

    def __repr__(self) -> str:
        return f"_SharedTexts({tuple(self)!r})"


# Shared memory for `UnicodeText`: per sub-env a length and the text as UTF-16 code units, one per character (the
# space is the BMP without surrogates), so writes and reads cost the text's length, not `max_length`.
@create_shared_memory.register(UnicodeText)
def _create_unicode_text_memory(space: UnicodeText, n: int = 1, ctx=multiprocessing):
    return ctx.Array("q", n), ctx.Array("H", n * space.max_length)


@read_from_shared_memory.register(UnicodeText)
def _read_unicode_texts(space: UnicodeText, shared_memory, n: int = 1) -> _SharedTexts:
    lengths, chars = shared_memory
    return _SharedTexts(np.frombuffer(lengths.get_obj(), dtype=np.int64),
                        np.frombuffer(chars.get_obj(), dtype=np.uint16), space.max_length)


@write_to_shared_memory.register(UnicodeText)
def _write_unicode_text(space: UnicodeText, index: int, value: str, shared_memory) -> None:
    lengths, chars = shared_memory
    units = np.frombuffer(value.encode("utf-16-le"), dtype=np.uint16)
    if len(units) != len(value) or len(value) > space.max_length:
        raise ValueError(f"observation of {len(value)} characters is not in {space} (astral characters or too long)")
    start = index * space.max_length
    np.frombuffer(chars.get_obj(), dtype=np.uint16)[start:start + len(units)] = units
    np.frombuffer(lengths.get_obj(), dtype=np.int64)[index] = len(units)


_TEXT_TEMPLATES: dict[int, UnicodeText] = {}


def text_space(max_length: int) -> UnicodeText:
    """A text space over the whole BMP. Building the 63k-character charset costs ~0.1 s, so a template is built
    once per length and copied (each copy gets its own random generator on first use)."""
    if max_length not in _TEXT_TEMPLATES:
        _TEXT_TEMPLATES[max_length] = UnicodeText(max_length=max_length, min_length=0, charset=_bmp_charset())
    return copy.deepcopy(_TEXT_TEMPLATES[max_length])


_OUTSIDE_BMP = re.compile("[\ud800-\udfff\U00010000-\U0010ffff]")


def sanitize_text(text: str) -> str:
    """Replace characters outside the BMP (and lone surrogates) by U+FFFD so the text lies in `text_space`."""
    if text.isascii():
        return text
    try:  # BMP text without surrogates: two UTF-16 bytes per character (a lone surrogate does not encode)
        if len(text.encode("utf-16-le")) == 2 * len(text):
            return text
    except UnicodeEncodeError:
        pass
    return _OUTSIDE_BMP.sub("\ufffd", text)


class NoRetrieverWarning(UserWarning):
    """The env was built without a corpus or retriever; searches return a configuration notice."""


NO_RETRIEVER_NOTICE = (
    "Search is not available: this environment has no retriever configured. Pass corpus='wiki-18 style .jsonl', "
    "retriever_url='http://host:port/retrieve' (a Search-R1 retriever server, e.g. `igpo-retriever`), or "
    "retriever=<a Retriever instance, e.g. a web search backend> to gym.make."
)
NO_BROWSER_NOTICE = "Browsing is not available: this environment has no browser configured (pass browser=...)."
_warned_no_retriever = False


def _warn_no_retriever_once() -> None:
    global _warned_no_retriever
    if not _warned_no_retriever:
        _warned_no_retriever = True
        warnings.warn(NO_RETRIEVER_NOTICE, NoRetrieverWarning, stacklevel=3)


def _query_key(query: str) -> str:
    return " ".join(query.lower().split())


@dataclass
class _Episode:
    """Mutable per-episode state."""

    item: QAItem
    messages: list[dict[str, str]]
    corpus_hash: str | None = None
    turn: int = 0
    queries: list[str] = field(default_factory=list)
    query_keys: set[str] = field(default_factory=set)
    repeated_queries: int = 0
    retrieved_ids: dict[str, None] = field(default_factory=dict)  # insertion-ordered set
    retrieved_titles: set[str] = field(default_factory=set)
    gold_recall: float | None = None
    done: bool = False


class InfoSnapshot(NamedTuple):
    """One reset's or step's ``info``, kept as what it takes to build it: the episode and how far each of its
    histories reached then (an episode only appends to them, so those prefixes are what the info lists).

    Taking one is a tuple; building the dict copies three history lists, which touches every message, query and
    passage id so far. `SearchQAVectorEnv` keeps snapshots and builds a sub-env's info the first time it is read.
    `build` returns the same dict every time."""

    info: dict[str, Any]  # empty until `build` fills it
    episode: _Episode
    messages: int
    queries: int
    retrieved: int
    turn: int
    repeated_queries: int
    gold_recall: float | None
    action: Action | None  # None for a reset
    ending: tuple[str | None, float, float] | None  # (prediction, em, f1) when the step ended the episode

    def build(self) -> dict[str, Any]:
        """The info dict. Lists are fresh copies; message dicts are shared with the env: do not edit them."""
        info = self.info
        if info:
            return info
        episode = self.episode
        item = episode.item
        retrieved = episode.retrieved_ids
        info.update(
            messages=episode.messages[:self.messages],
            question=item.question,
            question_id=item.id,
            data_source=item.data_source,
            turn=self.turn,
            num_searches=self.queries,
            queries=episode.queries[:self.queries],
            repeated_queries=self.repeated_queries,
            retrieved_ids=[*retrieved] if self.retrieved == len(retrieved) else [*islice(retrieved, self.retrieved)],
            gold_recall=self.gold_recall,
            corpus_hash=episode.corpus_hash,
        )
        if self.action is not None:
            info["action"] = {"kind": self.action.kind, "argument": self.action.argument, "error": self.action.error}
            info["error"] = self.action.error
        if self.ending is not None:
            prediction, em, f1 = self.ending
            info.update(golden_answers=list(item.golden_answers), prediction=prediction, em=em, f1=f1)
        return info


class SearchQAEnv(gym.Env[str, str]):
    """
    ## Description
    Multi-turn question answering with a search tool, as in Search-R1 and IGPO (arXiv 2510.14967). The agent reads a
    question, issues search queries whose top passages come back as the next observation, and ends the episode with
    an answer, scored against the gold aliases with SQuAD-normalised F1 (or exact match).

    ## Action Space
    `spaces.Text` of at most `MAX_ACTION_CHARS` characters: the agent's whole text for one turn, parsed by
    `igpo_envs.protocol.parse_action` (linear time, never raises; longer text is a malformed turn, unread):
    - `protocol="tag"` (Search-R1): `<search> query </search>` or `<answer> text </answer>`, `<think>` allowed.
    - `protocol="tool_call"` (official IGPO / Qwen): `<tool_call>{"name": "search", "arguments": {"query": "..."}}
      </tool_call>` or `<answer> text </answer>`.
    With `tools=("search", "browse")`, `<browse> url </browse>` (tag) or a `"browse"` tool call with `{"url": ...}`
    fetches a page through `browser`.

    ## Observation Space
    `spaces.Text` over every Basic Multilingual Plane character (Wikipedia text is not ASCII), `min_length=0`.
    At reset: the task prompt (instructions + question, `render_prompt`). After a search: the top-`topk` passages
    wrapped in `<information>` (tag) or `<tool_response>` (tool_call). After the episode ends: the empty string.
    Characters outside the BMP (rare in text corpora) are replaced with U+FFFD. The gold answer never appears in
    an observation that the environment writes itself.

    ## Rewards
    - Search / browse turn: 0 (information-gain rewards are added by `igpo_envs.information_gain`).
    - Answer turn: F1 (`reward_metric="f1"`) or EM (`"em"`) against the gold aliases, maximised over aliases.
    - Malformed turn (unbalanced, crossed or nested tags, bad JSON, unknown tool, empty query, both a tool call and
      an answer, text too long, ...): `format_penalty` (default -2.0, the official IGPO value).
    - Turn limit reached without an answer: `no_answer_reward` (default: `format_penalty`, as the official IGPO code,
      which scores a transcript without `<answer>` as a format error).

    ## Starting State
    A question drawn from `questions` in a seeded random order (a new permutation per pass), or the one pinned by
    `reset(options={"question_index": i})` / `reset(options={"question_id": id})`.

    ## Episode End
    - Termination: an answer turn, or a malformed turn.
    - Truncation: `max_turns` turns without an answer (`truncated=True`).

    ## Information
    `info` always has `messages` (chat messages so far: the user prompt, assistant turns, tool results with role
    `"tool"` in the tool_call protocol and `"user"` in the tag protocol), `question`, `question_id`, `data_source`,
    `turn`, `num_searches`, `queries`, `repeated_queries`, `retrieved_ids`, `gold_recall` (fraction of gold passages
    retrieved so far, `None` when the gold evidence is unknown), `corpus_hash`; after a step also `action` (the parsed
    action) and `error` (why a turn was malformed, else `None`); at episode end `golden_answers`, `prediction`, `em`,
    `f1`. `env.unwrapped.item` is the current `QAItem` and `env.unwrapped.items` all of them (trainers and oracle
    agents read the gold from there, never from observations).

    ## Arguments
    - `questions`: path to a FlashRAG jsonl (`{id, question, golden_answers}`) or a Search-R1/verl parquet, or a
      sequence of `QAItem`.
    - `corpus`: path to a wiki-18 style jsonl corpus (indexed with BM25 by `igpo_envs.search.make_retriever`).
    - `retriever`: a `Retriever` instance (e.g. a web backend or `RayRetrieverPool`), or the local engine for
      `corpus` by name, `"bm25s"` (default) or `"tantivy"`; `retriever_url`: a Search-R1 `/retrieve` server.
    - `retriever_kwargs`: extra arguments for `make_retriever`, e.g. `{"index": dir}` for a prebuilt
      `igpo-index build` directory (its manifest must match `corpus` when both are given).
    - `data_source`: keep only the questions of this source (e.g. `"nq"` from a merged multi-source parquet).
    - `protocol`: `"tag"` or `"tool_call"`. `prompt_template`: overrides the prompt (must contain `{question}`).
    - `observation_layout`: how search results are laid out: `"igpo"` (default: `<information>` on its own lines,
      `Doc 1 (Title: Paris) text`) or `"search-r1"` (Search-R1's exact text: `\n\n<information>Doc 1(Title:
      "Paris") text</information>\n\n`; see `igpo_envs.protocol.format_passages`).
    - `topk`: passages per search (3). `max_turns`: turn limit (10, as the paper). Both integers >= 1.
    - `format_penalty`: reward of a malformed turn (-2.0, finite). `reward_metric`: `"f1"` or `"em"`.
    - `no_answer_reward`: reward of the last turn when the turn limit ends the episode without an answer (None, the
      default: `format_penalty`; 0.0 makes searching until the limit cheaper than a wrong answer).
    - `tools`: tools the agent may call, from `("search", "browse")`. `browser`: `browser(url) -> str` for browse.
    - `render_mode`: `"ansi"` (the transcript as a string) or `"human"` (prints it).

    ## Version History
    - v0: initial version.
    """

    metadata = {"render_modes": ["ansi", "human"], "render_fps": 1}

    def __init__(
        self,
        questions: str | Path | Sequence[QAItem],
        corpus: str | Path | None = None,
        retriever: Retriever | str | None = None,
        retriever_url: str | None = None,
        protocol: str = "tag",
        topk: int = 3,
        max_turns: int = 10,
        format_penalty: float = -2.0,
        reward_metric: str = "f1",
        prompt_template: str | None = None,
        tools: Sequence[str] = ("search",),
        render_mode: str | None = None,
        browser: Callable[[str], str] | None = None,
        retriever_kwargs: dict[str, Any] | None = None,
        no_answer_reward: float | None = None,
        observation_layout: str = "igpo",
        data_source: str | None = None,
    ):
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
        if reward_metric not in REWARD_METRICS:
            raise ValueError(f"unknown reward_metric {reward_metric!r}; expected one of {sorted(REWARD_METRICS)}")
        if observation_layout not in OBSERVATION_LAYOUTS:
            raise ValueError(f"unknown observation_layout {observation_layout!r}; "
                             f"expected one of {OBSERVATION_LAYOUTS}")
        if isinstance(tools, str) or not tools or set(tools) - set(TOOLS):
            raise ValueError(f"tools must be a non-empty sequence of names from {TOOLS}, got {tools!r}")
        topk, max_turns = integer("topk", topk, 1), integer("max_turns", max_turns, 1)
        format_penalty = finite_number("format_penalty", format_penalty)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"unknown render_mode {render_mode!r}; expected one of {self.metadata['render_modes']}")
        render_prompt("", protocol, prompt_template)  # validates the template early

        self.items: tuple[QAItem, ...] = tuple(load_questions(questions, data_source))
        self._index_by_id = {item.id: i for i, item in enumerate(self.items)}
        if len(self._index_by_id) != len(self.items):
            duplicate = next(qid for qid, n in Counter(item.id for item in self.items).items() if n > 1)
            sources = sorted({item.data_source for item in self.items if item.id == duplicate})
            hint = f" (in data sources {sources}: pass data_source= to keep one)" if len(sources) > 1 else ""
            raise ValueError(f"question ids must be unique (they pin and trace episodes); {duplicate!r} repeats{hint}")
        self.protocol = protocol
        self._tool_role = "tool" if protocol == "tool_call" else "user"  # who speaks a tool result in the chat
        self.topk = topk
        self.max_turns = max_turns
        self.format_penalty = format_penalty
        self.observation_layout = observation_layout
        self.no_answer_reward = (self.format_penalty if no_answer_reward is None
                                 else finite_number("no_answer_reward", no_answer_reward))
        self.reward_metric = reward_metric
        self.prompt_template = prompt_template
        self.tools = tuple(tools)
        self.render_mode = render_mode
        self.browser = browser
        self.retriever = self._build_retriever(corpus, retriever, retriever_url, retriever_kwargs or {})
        if self.retriever is None and "search" in self.tools:
            _warn_no_retriever_once()
        check_topk = getattr(self.retriever, "check_topk", None)
        if check_topk is not None:  # a retriever server's limit: refuse now, not at every search
            check_topk(self.topk)
        self._init_kwargs = dict(protocol=protocol, topk=topk, max_turns=max_turns, format_penalty=format_penalty,
                                 reward_metric=reward_metric, prompt_template=prompt_template, tools=tuple(tools),
                                 render_mode=render_mode, browser=browser, no_answer_reward=no_answer_reward,
                                 observation_layout=observation_layout)

        self.observation_space = text_space(MAX_OBSERVATION_CHARS)
        self.action_space = text_space(MAX_ACTION_CHARS)
        self._order: np.ndarray | None = None
        self._cursor = 0
        self._episode: _Episode | None = None

    @staticmethod
    def _build_retriever(corpus, retriever, retriever_url, retriever_kwargs) -> Retriever | None:
        if corpus is None and retriever_url is None and retriever is None:
            return None
        from igpo_envs.search import make_retriever  # lazy: the BM25 / HTTP backends are heavier than the env

        return make_retriever(corpus=corpus, retriever_url=retriever_url, retriever=retriever, **retriever_kwargs)

    def spawn(self) -> SearchQAEnv:
        """A sibling env sharing this one's questions, retriever and settings (how the vector env builds its
        sub-envs without reloading data or rebuilding indexes). Subclasses with other constructors override it."""
        return SearchQAEnv(questions=self.items, retriever=self.retriever, **self._init_kwargs)

    # ------------------------------------------------------------------ properties
    @property
    def item(self) -> QAItem | None:
        """The current question (with its gold answers and evidence); None before the first reset."""
        return None if self._episode is None else self._episode.item

    @property
    def corpus_hash(self) -> str | None:
        return getattr(self.retriever, "content_hash", None) if self.retriever is not None else None

    def question_index(self, question_id: str) -> int:
        if question_id not in self._index_by_id:
            raise KeyError(f"unknown question_id {question_id!r}")
        return self._index_by_id[question_id]

    # ------------------------------------------------------------------ reset
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        observation, info = self.start(seed=seed, options=options)
        return observation, info.build()

    def start(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, InfoSnapshot]:
        """`reset`, with the info as an `InfoSnapshot` (``.build()`` gives the dict): how the vector env resets."""
        super().reset(seed=seed)
        options = options or {}
        if seed is not None or self._order is None:  # a seed fixes the question order from here on
            self._shuffle()
        if options.get("question_index") is not None:
            index = options["question_index"]
            if type(index) is not int:  # a plain int needs no check through the `numbers` ABCs (~0.5 µs a reset)
                index = integer("options['question_index']", index)
            if not 0 <= index < len(self.items):
                raise ValueError(f"question_index {index} out of range [0, {len(self.items)})")
        elif options.get("question_id") is not None:
            index = self.question_index(str(options["question_id"]))
        else:
            index = self._next_index()
        item = self.items[index]
        prompt = sanitize_text(render_prompt(item.question, self.protocol, self.prompt_template))
        self._episode = _Episode(item=item, messages=[{"role": "user", "content": prompt}],
                                 corpus_hash=self.corpus_hash)
        self._episode.gold_recall = self._gold_recall()
        if self.render_mode == "human":
            self.render()
        return prompt, self._snapshot(None)

    def _shuffle(self) -> None:
        self._order = self.np_random.permutation(len(self.items))
        self._cursor = 0

    def _next_index(self) -> int:
        """The next question of the seeded permutation; a new permutation per pass over the questions."""
        if self._cursor >= len(self._order):
            self._shuffle()
        index = int(self._order[self._cursor])
        self._cursor += 1
        return index

    # ------------------------------------------------------------------ step
    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        """One turn of the episode: read the action, run its search (if any), then `advance`. `step_batch` does the
        same for many envs with one batched search in the middle."""
        turn = self.read(action)
        passages = None
        if turn.kind == "search" and self.retriever is not None:
            (passages,) = retrieve(self.retriever, [turn.argument], self.topk)
        observation, reward, terminated, truncated, info = self.advance(action, turn, passages)
        return observation, reward, terminated, truncated, info.build()

    def read(self, action: Any) -> Action:
        """The parsed turn (`parse_action` with this env's protocol and tools). Raises `ResetNeeded` when no
        episode is running."""
        if self._episode is None or self._episode.done:
            raise ResetNeeded("the episode has ended (or never started): call reset() before step()")
        return parse_action(action, self.protocol, self.tools)

    def advance(self, action: Any, turn: Action, passages: Sequence[Passage] | None):
        """The rest of a step once `read` parsed ``action`` into ``turn`` and a search turn's ``passages`` were
        retrieved (None without a retriever): record the turn, reward it, and return ``(observation, reward,
        terminated, truncated, info)``, the info as an `InfoSnapshot` (``.build()`` gives the dict)."""
        episode = self._episode
        episode.turn += 1
        episode.messages.append({"role": "assistant", "content": action if isinstance(action, str) else repr(action)})
        observation, terminated, truncated = "", False, False
        prediction, em, f1 = None, 0.0, 0.0
        if turn.kind == "answer":
            prediction = turn.argument
            golds = episode.item.golden_answers
            em, f1 = exact_match(prediction, golds), f1_score(prediction, golds)
            reward, terminated = (f1 if self.reward_metric == "f1" else em), True
        elif turn.kind == "invalid":
            reward, terminated = self.format_penalty, True
        else:
            observation = sanitize_text(self._tool_result(turn, passages))
            episode.messages.append({"role": self._tool_role, "content": observation})
            truncated = episode.turn >= self.max_turns
            reward = self.no_answer_reward if truncated else 0.0  # out of turns without an answer
        episode.done = terminated or truncated
        info = self._snapshot(turn, (prediction, em, f1) if episode.done else None)
        if self.render_mode == "human":
            self.render()
        return observation, reward, terminated, truncated, info

    def _tool_result(self, turn: Action, passages: Sequence[Passage] | None) -> str:
        """The observation text of a tool turn, recording queries and retrieved passages on the way."""
        episode = self._episode
        if turn.kind == "search":
            key = _query_key(turn.argument)
            if key in episode.query_keys:
                episode.repeated_queries += 1
            else:
                episode.query_keys.add(key)
            episode.queries.append(turn.argument)
            if passages is None:
                return wrap_result(NO_RETRIEVER_NOTICE, self.protocol, self.observation_layout)
            retrieved_ids = episode.retrieved_ids
            known = len(retrieved_ids)
            for p in passages:
                retrieved_ids[p.id] = None
            if episode.gold_recall is not None:
                if not episode.item.gold_passage_ids:  # recall by title only then
                    episode.retrieved_titles.update(p.title for p in passages)
                    episode.gold_recall = self._gold_recall()
                elif len(retrieved_ids) > known:  # recall by id moves only when a passage is new
                    episode.gold_recall = self._gold_recall()
            return format_observation(passages, self.protocol, self.observation_layout)
        if self.browser is None:
            return wrap_result(NO_BROWSER_NOTICE, self.protocol, self.observation_layout)
        try:
            page = self.browser(turn.argument)
        except Exception as exc:  # a failed fetch is information for the agent, not a crash
            page = f"Could not open {turn.argument}: {type(exc).__name__}: {exc}"
        return wrap_result(str(page), self.protocol, self.observation_layout)

    def _snapshot(self, turn: Action | None, ending: tuple[str | None, float, float] | None = None) -> InfoSnapshot:
        episode = self._episode
        return _new_tuple(InfoSnapshot, ({}, episode, len(episode.messages), len(episode.queries),
                                         len(episode.retrieved_ids), episode.turn, episode.repeated_queries,
                                         episode.gold_recall, turn, ending))  # = InfoSnapshot(...), without a frame

    def _gold_recall(self) -> float | None:
        """Share of the gold passages retrieved so far (by id, else by title); None when the gold is unknown."""
        episode, item = self._episode, self._episode.item
        if item.gold_passage_ids:
            return sum(map(episode.retrieved_ids.__contains__, item.gold_passage_ids)) / len(item.gold_passage_ids)
        if item.gold_titles:
            return sum(map(episode.retrieved_titles.__contains__, item.gold_titles)) / len(item.gold_titles)
        return None

    # ------------------------------------------------------------------ render
    def render(self) -> str | None:
        if self.render_mode is None:
            gym.logger.warn("render() called without render_mode; pass render_mode='ansi' or 'human' to gym.make")
            return None
        if self._episode is None:
            transcript = ""
        else:
            transcript = "\n".join(f"[{m['role']}] {m['content']}" for m in self._episode.messages)
        if self.render_mode == "ansi":
            return transcript
        print(transcript.rsplit("\n[", 1)[-1] if self._episode and self._episode.turn else transcript)
        return None


def retrieve(retriever: Retriever, queries: list[str], topk: int) -> list[list[Passage]]:
    """``retriever.search(queries, topk)``, checked: one result list per query, at most ``topk`` passages each."""
    results = retriever.search(queries, topk)
    if len(results) != len(queries):
        raise RuntimeError(f"{type(retriever).__name__}.search returned {len(results)} result lists "
                           f"for {len(queries)} queries")
    return [result if type(result) is list and len(result) <= topk else list(result)[:topk] for result in results]


def step_batch(envs: Sequence[SearchQAEnv], actions: Sequence[Any], *,
               build_infos: bool = True) -> list[tuple[str, float, bool, bool, dict | InfoSnapshot]]:
    """Step many envs at once, as `SearchQAEnv.step` steps one: `SearchQAEnv.read` every action, answer all searches
    that share a retriever (and ``topk``) with ONE batched search, then `SearchQAEnv.advance` each env. Returns one
    ``(obs, reward, terminated, truncated, info)`` per env; with ``build_infos=False`` each info is an `InfoSnapshot`
    (``.build()`` gives the dict). `SearchQAVectorEnv.step` is built on it."""
    if len(envs) != len(actions):
        raise ValueError(f"got {len(envs)} envs but {len(actions)} actions")
    for kind in dict.fromkeys(map(type, envs)):  # the distinct types, in order: one check per type, not per env
        if not issubclass(kind, SearchQAEnv):
            raise TypeError(f"step_batch steps SearchQAEnv instances, got {kind.__name__}; pass env.unwrapped "
                            "(wrappers are not applied by step_batch)")
    turns = [env.read(action) for env, action in zip(envs, actions)]
    passages: list[list[Passage] | None] = [None] * len(envs)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, turn in enumerate(turns):
        if turn.kind == "search":
            env = envs[i]
            if env.retriever is not None:
                groups.setdefault((id(env.retriever), env.topk), []).append(i)
    for (_, topk), members in groups.items():
        results = retrieve(envs[members[0]].retriever, [turns[i].argument for i in members], topk)
        for i, result in zip(members, results):
            passages[i] = result
    results = [env.advance(action, turn, p) for env, action, turn, p in zip(envs, actions, turns, passages)]
    if build_infos:
        return [(obs, reward, terminated, truncated, info.build())
                for obs, reward, terminated, truncated, info in results]
    return results
