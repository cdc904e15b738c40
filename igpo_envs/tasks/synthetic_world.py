"""The entities, relations and passages of the synthetic multi-hop world (questions live in `synthetic.py`).

Four entity types, each with one encyclopedia-style passage whose title is the entity's name:

- person:  profession, birth year, birthplace (city), employer (company)
- film:    release year, director, producer, lead actor (persons), studio (company)
- company: industry, founding year, founder (person), headquarters (city)
- city:    country (a plain name, no passage), mayor (person)

Relations point one way only (a film names its director; the director's passage does not list films), so a question
that walks k relations needs k searches. Every entity also has an *alias* built from a small shared word pool
(``"also known as Kesh Dalo Miru"``); its words are common across the corpus, so a question that names an entity by
its alias gives BM25 only weak evidence and the surrounding question words can pull in other passages. Entities come in
*look-alike families* (``distractors`` siblings sharing a name stem, ``"Marlo Vesa"`` / ``"Marlo Vesan"``); a passage
mentions one look-alike ("not to be confused with ..."), and a film's producer is a look-alike of its director.

Everything is drawn with numpy from one seed, so the world is a pure function of its arguments.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field

import numpy as np

from igpo_envs.tasks.synthetic_names import (
    CODAS,
    MAX_LOOKALIKES,
    draw_word_pools,
    pool_size_for_pairs,
    sample_distinct_pairs,
)
from igpo_envs.types import Passage

ENTITY_TYPES = ("person", "film", "company", "city")
#: Share of the corpus per entity type (persons are the most referenced, so the most numerous).
TYPE_SHARES = {"person": 0.40, "film": 0.30, "company": 0.15, "city": 0.15}
PROFESSIONS = ("painter", "engineer", "writer", "singer", "architect", "chemist", "director", "actor")
PROFESSION_PHRASES = tuple(("an " if p[0] in "aeiou" else "a ") + p for p in PROFESSIONS)
INDUSTRIES = ("steel", "shipping", "software", "textile", "mining", "publishing", "railway", "film")
MIN_DOCS = 40
ALIAS_WORDS = 3
#: Alias word sets available per passage: small, so alias words are common (low IDF) yet every set is unique.
ALIAS_ROOM = 1.2


@dataclass(frozen=True)
class Relation:
    """A functional relation ``source -> target`` (target ``None``: a plain value such as a year or a country)."""

    name: str
    source: str
    target: str | None
    describe: str  # noun phrase naming the target given the source, e.g. "the director of {x}"
    ask: str  # question asking for the target, e.g. "Who directed {x}?"


RELATIONS: dict[str, Relation] = {r.name: r for r in (
    Relation("director", "film", "person", "the director of {x}", "Who directed {x}?"),
    Relation("producer", "film", "person", "the producer of {x}", "Who produced {x}?"),
    Relation("lead", "film", "person", "the lead actor of {x}", "Who plays the lead role in {x}?"),
    Relation("studio", "film", "company", "the studio behind {x}", "Which company made {x}?"),
    Relation("release_year", "film", None, "", "In which year was {x} released?"),
    Relation("birthplace", "person", "city", "the birthplace of {x}", "Where was {x} born?"),
    Relation("employer", "person", "company", "the employer of {x}", "Which company does {x} work for?"),
    Relation("birth_year", "person", None, "", "In which year was {x} born?"),
    Relation("founder", "company", "person", "the founder of {x}", "Who founded {x}?"),
    Relation("headquarters", "company", "city", "the home city of {x}", "In which city is {x} headquartered?"),
    Relation("founding_year", "company", None, "", "In which year was {x} founded?"),
    Relation("mayor", "city", "person", "the mayor of {x}", "Who is the mayor of {x}?"),
    Relation("country", "city", None, "", "In which country is {x}?"),
)}

# One sentence per fact, so every answer is stated plainly once in its passage. {n}: name, {al}: alias,
# {lk}: a look-alike's name. The name appears in the title and twice in the text (BM25 finds the entity's own
# passage first even when other passages mention it).
TEMPLATES = {
    "person": "{n}, also known as {al}, is {profession} born in {birth_year} in {birthplace}. "
              "{n} works for {employer}.",
    "film": "{n}, also known as {al}, is a film released in {release_year}. {n} was directed by {director} and "
            "produced by {producer}. {lead} plays the lead role. It was made by {studio}.",
    "company": "{n}, also known as {al}, is a {industry} company founded in {founding_year} by {founder}. "
               "{n} is headquartered in {headquarters}.",
    "city": "{n}, also known as {al}, is a city in {country}. The mayor of {n} is {mayor}.",
}
LOOKALIKE_SENTENCE = " {n} is not to be confused with {lk}."


@dataclass
class EntityTable:
    """All entities of one type: names and aliases as lists, attributes and relations as numpy arrays."""

    kind: str
    names: list[str]
    aliases: list[str]
    offset: int  # index of this type's first passage in the world's passage list
    lookalike: np.ndarray  # index (same type) of the sibling each passage mentions, -1 if none
    columns: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.names)


def type_counts(num_docs: int) -> dict[str, int]:
    if num_docs < MIN_DOCS:
        raise ValueError(f"num_docs must be >= {MIN_DOCS}, got {num_docs}")
    counts = {t: int(num_docs * TYPE_SHARES[t]) for t in ENTITY_TYPES}
    counts["person"] += num_docs - sum(counts.values())
    return counts


def generate_entities(num_docs: int, distractors: int, seed: int) -> tuple[dict[str, EntityTable], list[str]]:
    """Draw every entity of a world of ``num_docs`` passages; returns the tables and the country names."""
    if not 0 <= distractors <= MAX_LOOKALIKES:
        raise ValueError(f"distractors must be in [0, {MAX_LOOKALIKES}], got {distractors}")
    rng = np.random.default_rng(seed)
    counts = type_counts(num_docs)
    family = distractors + 1
    families = {t: -(-counts[t] // family) for t in ENTITY_TYPES}
    num_countries = int(np.clip(counts["city"] // 10, 4, 40))
    # Alias words: a small pool whose unordered triples still give every entity its own alias.
    alias_pool = ALIAS_WORDS + 1
    while _triples(alias_pool) < ALIAS_ROOM * num_docs:
        alias_pool += 1
    sizes = {f"{t}_{part}": pool_size_for_pairs(families[t]) for t in ENTITY_TYPES for part in "ab"}
    sizes.update(alias=alias_pool, country=num_countries)
    pools = draw_word_pools(sizes, rng)

    tables: dict[str, EntityTable] = {}
    offset = 0
    alias_words = _sample_aliases(num_docs, alias_pool, rng)  # (num_docs, 3) distinct-per-row word indices
    for t in ENTITY_TYPES:
        n = counts[t]
        fa, fb = sample_distinct_pairs(families[t], sizes[f"{t}_a"], rng)
        members = np.arange(n)
        fam, variant = members // family, members % family
        a_words, b_words = pools[f"{t}_a"], pools[f"{t}_b"]
        names = [f"{a_words[i]} {b_words[j]}{CODAS[v]}" for i, j, v in zip(fa[fam], fb[fam], variant)]
        aw = alias_words[offset:offset + n]
        al = pools["alias"]
        aliases = [f"{al[x]} {al[y]} {al[z]}" for x, y, z in aw]
        tables[t] = EntityTable(t, names, aliases, offset, _sibling(fam, variant, family, n, rng))
        offset += n

    p, f, c, y = (counts[t] for t in ENTITY_TYPES)
    persons = tables["person"]
    persons.columns = {
        "profession": rng.integers(len(PROFESSIONS), size=p),
        "birth_year": rng.integers(1900, 2000, size=p),
        "birthplace": rng.integers(y, size=p),
        "employer": rng.integers(c, size=p),
    }
    director = rng.integers(p, size=f)
    producer = persons.lookalike[director].copy()  # the producer is a look-alike of the director when one exists
    no_sibling = producer < 0
    producer[no_sibling] = rng.integers(p, size=int(no_sibling.sum()))
    tables["film"].columns = {
        "release_year": rng.integers(1920, 2020, size=f),
        "director": director,
        "producer": producer,
        "lead": rng.integers(p, size=f),
        "studio": rng.integers(c, size=f),
    }
    tables["company"].columns = {
        "industry": rng.integers(len(INDUSTRIES), size=c),
        "founding_year": rng.integers(1800, 2000, size=c),
        "founder": rng.integers(p, size=c),
        "headquarters": rng.integers(y, size=c),
    }
    tables["city"].columns = {
        "country": rng.integers(num_countries, size=y),
        "mayor": rng.integers(p, size=y),
    }
    return tables, pools["country"]


def _triples(n: int) -> int:
    return n * (n - 1) * (n - 2) // 6


def _sample_aliases(num: int, pool: int, rng: np.random.Generator) -> np.ndarray:
    """``num`` distinct 3-word sets (sorted index triples) from ``pool`` words: enumerate every triple, draw rows."""
    blocks = []
    for a in range(pool - 2):  # triples starting with word a: pairs (b, c) with a < b < c
        b, c = np.triu_indices(pool - a - 1, k=1)
        blocks.append(np.stack([np.full(len(b), a), b + a + 1, c + a + 1], axis=1))
    triples = np.concatenate(blocks)
    return triples[rng.choice(len(triples), size=num, replace=False)]


def _sibling(fam: np.ndarray, variant: np.ndarray, family: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """For each entity, another member of its look-alike family (-1 when it has none)."""
    if family == 1:
        return np.full(n, -1, dtype=np.int64)
    other = (variant + 1 + rng.integers(family - 1, size=n)) % family
    sibling = fam * family + other
    # The last family may be incomplete: fall back to the first member, or -1 if that is the entity itself.
    sibling = np.where(sibling < n, sibling, fam * family)
    return np.where(sibling == np.arange(n), -1, sibling)


def render_passages(tables: dict[str, EntityTable], countries: list[str]) -> list[Passage]:
    """One passage per entity, in type order (passage index = table offset + entity index)."""
    passages: list[Passage] = []
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a million new objects would trigger many full collections that find nothing to free
    try:
        _render_into(passages, tables, countries)
    finally:
        if gc_was_enabled:
            gc.enable()
    return passages


def _render_into(passages: list[Passage], tables: dict[str, EntityTable], countries: list[str]) -> None:
    names = {t: tables[t].names for t in ENTITY_TYPES}
    for t in ENTITY_TYPES:
        table = tables[t]
        columns = {key: _render_column(key, values, names, countries) for key, values in table.columns.items()}
        template = TEMPLATES[t]
        keys = list(columns)
        lookalikes = table.lookalike.tolist()
        for i, (name, alias) in enumerate(zip(table.names, table.aliases)):
            text = template.format(n=name, al=alias, **{k: columns[k][i] for k in keys})
            if lookalikes[i] >= 0:
                text += LOOKALIKE_SENTENCE.format(n=name, lk=table.names[lookalikes[i]])
            passages.append(Passage(id=f"synth-{table.offset + i}", title=name, text=text))


def _render_column(key: str, values: np.ndarray, names: dict[str, list[str]], countries: list[str]) -> list[str]:
    """The text each value of a column is written as (a name for relations, a word or a number for attributes)."""
    relation = RELATIONS.get(key)
    if relation is not None and relation.target is not None:
        target = names[relation.target]
        return [target[i] for i in values.tolist()]
    if key == "profession":
        return [PROFESSION_PHRASES[i] for i in values.tolist()]
    if key == "industry":
        return [INDUSTRIES[i] for i in values.tolist()]
    if key == "country":
        return [countries[i] for i in values.tolist()]
    return [str(v) for v in values.tolist()]
