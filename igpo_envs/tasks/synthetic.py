"""`igpo/SynthMultiHop-v0`: a procedurally generated world with k-hop questions, no download needed.

The world (`synthetic_world.py`) is a set of made-up people, films, companies and cities, one short passage each.
A k-hop question walks k relations from a named start entity, e.g. (2 hops) "Where was the director of Romo Zutu
born?": the film's passage names the director, the director's passage names the birthplace, and neither passage
alone answers it. The oracle plan (`QAItem.metadata["oracle_queries"]`) is one query per hop: the start entity's
name (or alias), then the name read off each gold passage.

Difficulty knobs:
- ``hops``: searches needed (1-4; a list mixes them).
- ``num_docs``: corpus size (40 to millions of passages).
- ``distractors``: look-alike siblings per entity (0-6), e.g. "Marlo Vesa" / "Marlo Vesan"; a film's producer is a
  look-alike of its director, so the second query must copy the right name exactly.
- ``hard_queries``: the question names its start entity by its alias, whose words are common across the corpus and
  absent from the passage title; searching the alias alone finds the passage, while searching the whole question
  lets its other words (director, born, company...) pull in unrelated passages. The answer is still stated plainly
  in one sentence of the gold passage, so reading stays easy and searching is the hard part.
- ``paths``: ask only these relation chains (e.g. ``[["director", "birthplace"]]``) instead of random ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from igpo_envs.tasks.synthetic_world import (
    ENTITY_TYPES,
    RELATIONS,
    EntityTable,
    generate_entities,
    render_passages,
)
from igpo_envs.types import Passage, QAItem

DATA_SOURCE = "synthetic"
MAX_HOPS = 4
SPLITS = ("all", "train", "eval")
#: Share of each type's entities reserved as start entities of the eval split.
EVAL_SHARE = 0.2
ENTITY_RELATIONS = {t: tuple(r for r in RELATIONS.values() if r.source == t and r.target) for t in ENTITY_TYPES}
ALL_RELATIONS = {t: tuple(r for r in RELATIONS.values() if r.source == t) for t in ENTITY_TYPES}


@dataclass(frozen=True)
class OracleStep:
    """One hop of the oracle plan: the query to issue and the passage it must retrieve."""

    query: str
    passage_id: str
    title: str


class SyntheticWorld:
    """A seeded world of entities and passages, plus question generation over it.

    Args:
        num_docs: number of passages (one per entity), >= 40.
        distractors: look-alike siblings per entity, 0-6.
        seed: the world's seed; the same arguments always give the same world.

    Use `get_world` to share one world between envs built with the same arguments.
    """

    def __init__(self, num_docs: int = 2000, distractors: int = 2, seed: int = 0):
        self.num_docs, self.distractors, self.seed = int(num_docs), int(distractors), int(seed)
        self.tables, self.countries = generate_entities(self.num_docs, self.distractors, self.seed)
        # Eval start entities: a fixed random subset per type, so train and eval questions never share a start.
        rng = np.random.default_rng([self.seed, 1])
        self._eval_start = {t: rng.random(len(self.tables[t])) < EVAL_SHARE for t in ENTITY_TYPES}

    def __repr__(self) -> str:
        return f"SyntheticWorld(num_docs={self.num_docs}, distractors={self.distractors}, seed={self.seed})"

    @cached_property
    def passages(self) -> list[Passage]:
        """Every passage, ``passages[i].id == f"synth-{i}"``; the title is the entity's name."""
        return render_passages(self.tables, self.countries)

    # ------------------------------------------------------------------ questions
    def questions(self, n: int, hops: int | Sequence[int] = 2, seed: int = 0, split: str = "all",
                  hard_queries: bool = False, paths: Sequence[Sequence[str]] | None = None) -> list[QAItem]:
        """``n`` distinct questions (fewer only if the split has fewer distinct ones).

        Args:
            n: number of questions.
            hops: searches each question needs, 1-4; a sequence mixes them uniformly.
            seed: question seed (same seed and arguments → same questions).
            split: ``"train"`` and ``"eval"`` draw their start entities from disjoint subsets of the world, so
                their questions are disjoint; ``"all"`` draws from every entity.
            hard_queries: name the start entity by its alias (see the module docstring).
            paths: fixed relation chains to ask about, e.g. ``[("director", "birthplace")]`` (one drawn uniformly
                per question; each chain's length is its number of hops, so ``hops`` is ignored). None: random
                chains of ``hops`` relations.
        """
        fixed = _check_paths(paths)
        hop_choices = list([hops] if np.isscalar(hops) else hops)
        if not hop_choices or any(isinstance(h, (bool, np.bool_)) or not isinstance(h, (int, np.integer))
                                  or not 1 <= h <= MAX_HOPS for h in hop_choices):
            raise ValueError(f"hops must be in [1, {MAX_HOPS}] (or a non-empty list of such), got {hops!r}")
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        rng = np.random.default_rng([self.seed, 2, int(seed), SPLITS.index(split)])
        starts = {t: self._split_starts(t, split) for t in ENTITY_TYPES}
        types = [t for t in ENTITY_TYPES if len(starts[t])]
        seen: set[tuple] = set()
        items: list[QAItem] = []
        attempts = 0
        while len(items) < n and attempts < 20 * n + 100:
            attempts += 1
            if fixed:
                path = fixed[rng.integers(len(fixed))]
                hop, kind = len(path), path[0].source
            else:
                hop = hop_choices[rng.integers(len(hop_choices))]
                kind = types[rng.integers(len(types))]
            if not len(starts[kind]):
                raise ValueError(f"the {split!r} split of {self!r} has no {kind} entity to start a question from")
            start = int(starts[kind][rng.integers(len(starts[kind]))])
            path = path if fixed else self._random_path(kind, hop, rng)
            key = (kind, start, tuple(r.name for r in path))
            if key in seen:
                continue
            seen.add(key)
            item = self.make_question(kind, start, [r.name for r in path], hard_queries)
            chain = set(item.gold_passage_ids) | {item.metadata["answer_passage_id"]} - {None}
            if len(chain) < hop + (item.metadata["answer_passage_id"] is not None):
                continue  # the walk revisits an entity, so fewer searches would do: not a true k-hop question
            items.append(item)
        return items

    def _split_starts(self, kind: str, split: str) -> np.ndarray:
        mask = self._eval_start[kind]
        if split == "all":
            return np.arange(len(mask))
        return np.flatnonzero(mask if split == "eval" else ~mask)

    @staticmethod
    def _random_path(kind: str, hops: int, rng: np.random.Generator) -> list:
        path = []
        for _ in range(hops - 1):
            options = ENTITY_RELATIONS[kind]
            relation = options[rng.integers(len(options))]
            path.append(relation)
            kind = relation.target
        options = ALL_RELATIONS[kind]
        path.append(options[rng.integers(len(options))])
        return path

    def make_question(self, kind: str, start: int, relations: Sequence[str], hard_queries: bool = False) -> QAItem:
        """The question that walks ``relations`` from entity ``start`` of type ``kind`` (the oracle plan in
        ``metadata``)."""
        if kind not in self.tables or not 0 <= start < len(self.tables[kind]):
            raise ValueError(f"no {kind!r} entity with index {start} in {self!r}")
        if not 1 <= len(relations) <= MAX_HOPS or any(name not in RELATIONS for name in relations):
            raise ValueError(f"relations must be 1-{MAX_HOPS} names from {sorted(RELATIONS)}, got {relations!r}")
        chain: list[tuple[str, int]] = [(kind, start)]
        for k, name in enumerate(relations):
            relation = RELATIONS[name]
            if relation.source != chain[-1][0] or (relation.target is None and k < len(relations) - 1):
                raise ValueError(f"relation {name!r} cannot follow a walk that reached a {chain[-1][0]} "
                                 f"(it starts from a {relation.source}; plain values only end a walk)")
            if relation.target is not None:
                chain.append((relation.target, int(self.tables[chain[-1][0]].columns[name][chain[-1][1]])))
        *hop_entities, last = chain if RELATIONS[relations[-1]].target else (chain + [None])
        start_table = self.tables[kind]
        reference = start_table.aliases[start] if hard_queries else start_table.names[start]
        phrase = reference
        for name in relations[:-1]:
            phrase = RELATIONS[name].describe.format(x=phrase)
        question = RELATIONS[relations[-1]].ask.format(x=phrase)
        if last is not None:
            table = self.tables[last[0]]
            answers = (table.names[last[1]], table.aliases[last[1]])
            answer_passage_id = f"synth-{table.offset + last[1]}"
        else:
            answers = (self.attribute_text(*hop_entities[-1], relations[-1]),)
            answer_passage_id = None
        steps = [self._step(t, i, reference if j == 0 else None) for j, (t, i) in enumerate(hop_entities)]
        question_id = f"synth-s{self.seed}-{'-'.join(relations)}-{start_table.offset + start}"
        return QAItem(
            id=question_id + ("-alias" if hard_queries else ""),
            question=question,
            golden_answers=answers,
            data_source=DATA_SOURCE,
            gold_passage_ids=tuple(s.passage_id for s in steps),
            gold_titles=tuple(s.title for s in steps),
            metadata={
                "hops": len(relations),
                "relations": list(relations),
                "oracle_queries": [s.query for s in steps],
                "hard_queries": bool(hard_queries),
                "answer_passage_id": answer_passage_id,  # the answer entity's own passage (None for a value)
                "world": repr(self),
            },
        )

    def _step(self, kind: str, index: int, query: str | None) -> OracleStep:
        table: EntityTable = self.tables[kind]
        name = table.names[index]
        return OracleStep(query=query or name, passage_id=f"synth-{table.offset + index}", title=name)

    def attribute_text(self, kind: str, index: int, relation: str) -> str:
        """How a plain-value relation (year, country) of an entity is written in its passage."""
        value = int(self.tables[kind].columns[relation][index])
        return self.countries[value] if relation == "country" else str(value)

    # ------------------------------------------------------------------ tokenizer material
    def vocabulary_texts(self, num_questions: int = 200) -> list[str]:
        """Texts covering every word the env can show: all passages (title and text) and sample questions of every
        relation in both reference modes — train a tiny tokenizer on these."""
        texts = [p.contents for p in self.passages]
        for hard in (False, True):
            texts += [q.question for q in self.questions(num_questions, hops=[1, 2, 3, 4], seed=0, hard_queries=hard)]
        texts += [r.ask.format(x="it") for r in RELATIONS.values()]  # every template, even if not sampled above
        texts += [r.describe.format(x="it") for r in RELATIONS.values() if r.describe]
        return texts


def search_success(retriever, items: Sequence[QAItem], topk: int = 3) -> dict[str, float]:
    """How often searching finds the evidence, without any reader (batched ``retriever.search`` calls):

    - ``oracle``: every hop's oracle query retrieves that hop's gold passage in the top ``topk``;
    - ``question_first_hop``: searching the question itself retrieves the first hop's gold passage;
    - ``question_answer_passage``: searching the question itself retrieves the passage that states the answer (what
      a search-once-then-read agent needs).
    """
    if not items:
        raise ValueError("search_success needs at least one question")
    flat = [(i, j, q) for i, item in enumerate(items) for j, q in enumerate(item.metadata["oracle_queries"])]
    oracle = np.ones(len(items), dtype=bool)
    for (i, j, _), passages in zip(flat, retriever.search([q for _, _, q in flat], topk)):
        oracle[i] &= items[i].gold_passage_ids[j] in {p.id for p in passages}
    naive = [{p.id for p in ps} for ps in retriever.search([item.question for item in items], topk)]
    return {
        "oracle": float(oracle.mean()),
        "question_first_hop": float(np.mean([item.gold_passage_ids[0] in ids for item, ids in zip(items, naive)])),
        "question_answer_passage": float(np.mean([item.gold_passage_ids[-1] in ids
                                                  for item, ids in zip(items, naive)])),
    }


def _check_paths(paths: Sequence[Sequence[str]] | None) -> list[list]:
    """Validate ``paths`` (relation chains) and return them as lists of `Relation`; [] for None."""
    if paths is None:
        return []
    if isinstance(paths, str) or not len(paths):
        raise ValueError(f"paths must be a non-empty list of relation chains, e.g. [['director', 'birthplace']], "
                         f"got {paths!r}")
    chains = []
    for chain in paths:
        if isinstance(chain, str) or not 1 <= len(chain) <= MAX_HOPS:
            raise ValueError(f"each path must be a list of 1-{MAX_HOPS} relation names, got {chain!r}")
        unknown = [name for name in chain if name not in RELATIONS]
        if unknown:
            raise ValueError(f"path {list(chain)!r}: unknown relation(s) {unknown}; expected names from "
                             f"{sorted(RELATIONS)}")
        relations = [RELATIONS[name] for name in chain]
        for before, after in zip(relations, relations[1:]):
            if before.target != after.source:
                raise ValueError(f"path {list(chain)!r}: {after.name!r} starts from a {after.source}, but "
                                 f"{before.name!r} leads to {before.target or 'a plain value'}")
        chains.append(relations)
    return chains


@lru_cache(maxsize=8)
def get_world(num_docs: int = 2000, distractors: int = 2, seed: int = 0) -> SyntheticWorld:
    """The world for these arguments, built once per process (envs, vector sub-envs and splits share it)."""
    return SyntheticWorld(num_docs=num_docs, distractors=distractors, seed=seed)


@lru_cache(maxsize=8)
def get_retriever(num_docs: int = 2000, distractors: int = 2, seed: int = 0, cache_dir: str | None = None,
                  n_threads: int | None = 1):
    """The BM25 retriever over that world's passages, built once per process; its index is cached on disk under
    ``cache_dir`` (None: `igpo_envs.search.bm25.default_cache_dir`), so a new process loads it instead of
    rebuilding.

    ``n_threads`` (numba threads per search; None: every CPU) defaults to 1: measured on this 2-core machine while
    other jobs ran, bm25s's parallel kernel answered 16 single-query searches/s on the 2,000-passage world against
    700/s for the serial one (its threads wait on each other at a barrier); pass None for big batches on idle cores.
    """
    from igpo_envs.search.bm25 import BM25Retriever  # lazy: keeps importing the task light

    world = get_world(num_docs, distractors, seed)
    return BM25Retriever.from_passages(world.passages, cache_dir=cache_dir, n_threads=n_threads)


def make_synth_env(
    num_docs: int = 2000,
    hops: int | Sequence[int] = 2,
    distractors: int = 2,
    num_questions: int = 1000,
    seed: int = 0,
    hard_queries: bool = False,
    split: str = "all",
    question_seed: int = 0,
    cache_dir: str | Path | None = None,
    paths: Sequence[Sequence[str]] | None = None,
    retriever_threads: int | None = 1,
    **env_kwargs: Any,
):
    """Build a `SearchQAEnv` over a synthetic world (what ``gym.make("igpo/SynthMultiHop-v0", ...)`` calls).

    Args:
        num_docs: passages in the world (one per entity).
        hops: searches per question (1-4, or a list to mix).
        distractors: look-alike siblings per entity (0-6).
        num_questions: questions in the env's pool.
        seed: the world's seed.
        hard_queries: questions name their start entity by its alias (the query must be extracted, not copied).
        split: ``"train"`` / ``"eval"`` (disjoint start entities) or ``"all"``.
        question_seed: seed of the question draw (vary it for more questions from the same world).
        cache_dir: where the BM25 index is cached on disk (None: ``$IGPO_CACHE_DIR`` or ``~/.cache/igpo/indexes``).
        paths: fixed relation chains to ask about instead of random ones, e.g. ``[["director", "birthplace"]]``.
        retriever_threads: numba threads per BM25 search (default 1, see `get_retriever`; None: every CPU).
        **env_kwargs: passed to `SearchQAEnv` (``protocol``, ``topk``, ``max_turns``, ``format_penalty``, ...).
    """
    from igpo_envs.arguments import integer as _integer
    from igpo_envs.env import SearchQAEnv

    if isinstance(hops, list):
        hops = tuple(hops)
    # No silent coercions: int(2.5) would build another world, bool("false") is True.
    num_docs, distractors, seed = (_integer(name, value) for name, value in
                                   (("num_docs", num_docs), ("distractors", distractors), ("seed", seed)))
    num_questions, question_seed = _integer("num_questions", num_questions), _integer("question_seed", question_seed)
    if not isinstance(hard_queries, (bool, np.bool_)):
        raise TypeError(f"hard_queries must be a bool, got {hard_queries!r}")
    world = get_world(num_docs, distractors, seed)
    questions = world.questions(num_questions, hops=hops, seed=question_seed, split=split,
                                hard_queries=bool(hard_queries), paths=paths)
    threads = None if retriever_threads is None else _integer("retriever_threads", retriever_threads, minimum=1)
    retriever = get_retriever(num_docs, distractors, seed, None if cache_dir is None else str(cache_dir), threads)
    return SearchQAEnv(questions=questions, retriever=retriever, **env_kwargs)
