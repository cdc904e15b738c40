"""igpo/SynthMultiHop-v0: the generated world, its questions and oracle plans, and the env built on it."""

from __future__ import annotations

import re
from collections import Counter

import gymnasium as gym
import pytest

import igpo_envs  # noqa: F401  (registers the ids)
from igpo_envs.metrics import normalize_answer
from igpo_envs.tasks.synthetic import SyntheticWorld, get_retriever, get_world, make_synth_env, search_success
from igpo_envs.tasks.synthetic_world import type_counts

DOCS = 1000


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("synth-index"))


@pytest.fixture(scope="module")
def world():
    return get_world(DOCS, 2, 0)


@pytest.fixture(scope="module")
def retriever(cache_dir):
    return get_retriever(DOCS, 2, 0, cache_dir)


def test_same_seed_same_world_and_questions():
    a, b = SyntheticWorld(300, 2, seed=5), SyntheticWorld(300, 2, seed=5)
    assert a.passages == b.passages
    assert a.questions(50, hops=[1, 2, 3], seed=1) == b.questions(50, hops=[1, 2, 3], seed=1)
    assert [q.metadata for q in a.questions(20, seed=2)] == [q.metadata for q in b.questions(20, seed=2)]
    c = SyntheticWorld(300, 2, seed=6)
    assert [p.text for p in a.passages] != [p.text for p in c.passages]
    assert a.questions(50, seed=1) != a.questions(50, seed=2)


def test_world_shape_and_unique_names(world):
    passages = world.passages
    assert len(passages) == DOCS
    assert [p.id for p in passages] == [f"synth-{i}" for i in range(DOCS)]
    titles = [p.title for p in passages]
    assert len(set(titles)) == DOCS  # every name is unique, across types too
    aliases = [alias for t in world.tables.values() for alias in t.aliases]
    assert len({frozenset(a.split()) for a in aliases}) == DOCS  # unique as bags of words (what BM25 sees)
    title_words = {w for t in titles for w in t.split()}
    assert not title_words & {w for a in aliases for w in a.split()}  # an alias never shares a word with a name
    for p in passages:
        assert p.text.count(p.title) >= 2  # stated in the text, not only in the title
    # The retriever stems words: look-alikes ("Vesa" / "Vesan") must stay distinct index terms.
    import Stemmer

    words = sorted({w.lower() for w in title_words})
    assert len(set(Stemmer.Stemmer("english").stemWords(words))) == len(words)


# How each relation's target is stated in the source's passage (independent of the generator's templates).
STATED_AS = {
    "director": r"directed by {}\b", "producer": r"produced by {}\.", "lead": r"\. {} plays the lead role",
    "studio": r"made by {}\.", "release_year": r"released in {}\.", "birthplace": r"born in \d+ in {}\.",
    "employer": r"works for {}\.", "birth_year": r"born in {} in", "founder": r"founded in \d+ by {}\.",
    "headquarters": r"headquartered in {}\.", "founding_year": r"founded in {} by", "mayor": r"The mayor of .+ is {}\.",
    "country": r"is a city in {}\.",
}


def _states(text: str, phrase: str) -> bool:
    """``phrase`` occurs in ``text`` as whole words ("Tizu Fami" is not stated by "Tizu Famir")."""
    return re.search(rf"\b{re.escape(phrase)}\b", text) is not None


@pytest.mark.parametrize("hops", [1, 2, 3, 4])
@pytest.mark.parametrize("hard", [False, True])
def test_gold_passages_contain_the_answer_chain(world, hops, hard):
    for item in world.questions(60, hops=hops, seed=hops, hard_queries=hard):
        queries = item.metadata["oracle_queries"]
        assert item.metadata["hops"] == hops == len(queries) == len(item.gold_passage_ids)
        texts = [world.passages[int(pid.split("-")[1])].text for pid in item.gold_passage_ids]
        assert _states(item.question, queries[0])  # hop 1: the entity the question names
        assert _states(texts[0], queries[0])
        relations = item.metadata["relations"]
        for j in range(1, hops):  # hop j+1's query is the name hop j's relation states in hop j's gold passage
            assert re.search(STATED_AS[relations[j - 1]].format(re.escape(queries[j])), texts[j - 1])
            assert world.passages[int(item.gold_passage_ids[j].split("-")[1])].title == queries[j]
        # The answer is stated plainly, once, by the last relation's sentence of the last gold passage.
        assert re.search(STATED_AS[relations[-1]].format(re.escape(item.golden_answers[0])), texts[-1])
        assert not any(q in item.question for q in queries[1:])  # later hops are not given away
        walk = [*item.gold_passage_ids, item.metadata["answer_passage_id"]]
        walk = [pid for pid in walk if pid is not None]
        assert len(set(walk)) == len(walk)  # no entity revisited: k hops really need k searches


def test_hard_queries_name_the_start_by_alias(world):
    easy = world.questions(40, hops=2, seed=3)
    hard = world.questions(40, hops=2, seed=3, hard_queries=True)
    assert [q.gold_passage_ids for q in easy] == [q.gold_passage_ids for q in hard]  # same draws, other wording
    for e, h in zip(easy, hard):
        assert e.gold_titles[0] in e.question and e.gold_titles[0] not in h.question
        assert h.metadata["oracle_queries"][0] not in h.gold_titles[0]
        assert h.golden_answers == e.golden_answers


def test_paths_fix_the_relation_chains(world):
    chains = [["director", "birthplace"], ["founder", "employer", "founding_year"]]
    items = world.questions(80, seed=1, paths=chains, hard_queries=True)
    assert len(items) == 80
    seen = Counter(tuple(q.metadata["relations"]) for q in items)
    assert set(seen) == {tuple(c) for c in chains} and min(seen.values()) > 15
    for q in items:
        assert q.metadata["hops"] == len(q.metadata["relations"]) == len(q.metadata["oracle_queries"])
    directed = [q for q in items if q.metadata["relations"] == ["director", "birthplace"]]
    assert all(q.question.startswith("Where was the director of ") for q in directed)


@pytest.mark.parametrize("paths, message", [
    ([], "non-empty"),
    ("director", "non-empty"),
    ([["directed"]], "unknown relation"),
    ([["birthplace", "director"]], "starts from a film"),
    ([["release_year", "director"]], "plain value"),
    ([["director"] * 5], "1-4 relation names"),
])
def test_paths_are_validated(world, paths, message):
    with pytest.raises(ValueError, match=message):
        world.questions(5, paths=paths)


def test_paths_reach_the_env():
    env = gym.make("igpo/SynthMultiHop-v0", num_docs=DOCS, num_questions=10, paths=[["mayor", "birth_year"]])
    _, info = env.reset(seed=0)
    assert all(item.metadata["relations"] == ["mayor", "birth_year"] for item in env.unwrapped.items)
    env.close()


def test_hops_list_mixes_and_validation(world):
    counts = Counter(q.metadata["hops"] for q in world.questions(200, hops=[1, 3], seed=0))
    assert set(counts) == {1, 3} and min(counts.values()) > 50
    with pytest.raises(ValueError, match="hops"):
        world.questions(5, hops=5)
    with pytest.raises(ValueError, match="split"):
        world.questions(5, split="test")
    with pytest.raises(ValueError, match="num_docs"):
        SyntheticWorld(10)
    with pytest.raises(ValueError, match="distractors"):
        SyntheticWorld(100, distractors=7)


def test_questions_are_distinct_and_splits_disjoint(world):
    train = world.questions(300, hops=[1, 2], seed=0, split="train")
    evaluation = world.questions(100, hops=[1, 2], seed=0, split="eval")
    assert len({q.id for q in train}) == len(train) == 300
    assert len({q.question for q in train}) == 300
    assert not {q.gold_passage_ids[0] for q in train} & {q.gold_passage_ids[0] for q in evaluation}


def test_distractors_knob_makes_lookalike_families():
    plain = SyntheticWorld(400, distractors=0, seed=1)
    assert not any("not to be confused" in p.text for p in plain.passages)
    crowded = SyntheticWorld(400, distractors=3, seed=1)
    persons = crowded.tables["person"].names
    # Families of 4 share the first name and the surname stem; they differ only by the final consonant.
    family = persons[:4]
    assert len({n.split()[0] for n in family}) == 1
    assert len({re.sub(r"[nrklmt]$", "", n.split()[1]) for n in family}) == 1
    lookalike = sum("not to be confused" in p.text for p in crowded.passages)
    assert lookalike == len(crowded.passages)
    # A film's producer is a look-alike of its director.
    film = crowded.tables["film"]
    d, p = film.columns["director"], film.columns["producer"]
    assert all(persons[i].split()[0] == persons[j].split()[0] and i != j for i, j in zip(d[:50], p[:50]))


def test_num_docs_knob():
    counts = type_counts(5000)
    assert sum(counts.values()) == 5000 and counts["person"] > counts["film"] > counts["company"]
    assert len(SyntheticWorld(777, seed=0).passages) == 777


def test_vocabulary_is_small(world):
    words = {w.lower() for text in world.vocabulary_texts() for w in re.findall(r"\w+", text)}
    assert 200 < len(words) < 1000  # a tiny word-level tokenizer (600-2000 tokens) covers it
    unseen = world.questions(300, hops=[1, 2, 3, 4], seed=99, hard_queries=True)
    unseen += world.questions(300, hops=[1, 2, 3, 4], seed=98)
    assert {w.lower() for q in unseen for w in re.findall(r"\w+", q.question + " ".join(q.golden_answers))} <= words


@pytest.mark.parametrize("hops", [2, 3])
def test_question_as_query_is_clearly_below_the_oracle(world, retriever, hops):
    hard = world.questions(300, hops=hops, seed=7, hard_queries=True)
    success = search_success(retriever, hard)
    assert success["oracle"] >= 0.99
    assert success["question_answer_passage"] <= 0.1  # one search of the question almost never reaches the answer
    assert success["question_first_hop"] <= 0.85  # and with hard queries, often not even the first hop's passage
    easy = search_success(retriever, world.questions(300, hops=hops, seed=7))
    assert easy["oracle"] >= 0.99 and easy["question_first_hop"] >= 0.95  # easy: copying the question finds hop 1


def _run_oracle(env, num_episodes):
    solved = 0
    for episode in range(num_episodes):
        env.reset(options={"question_index": episode})
        item = env.unwrapped.item
        for query in item.metadata["oracle_queries"]:
            obs, reward, terminated, truncated, info = env.step(f"<search> {query} </search>")
            assert not terminated and not truncated
        # The oracle reads the answer off the last observation, exactly as the passage states it.
        answer = next(a for a in item.golden_answers if normalize_answer(a) in normalize_answer(obs))
        _, reward, terminated, _, info = env.step(f"<answer> {answer} </answer>")
        assert terminated
        solved += info["em"] == 1.0 and info["gold_recall"] == 1.0
    return solved / num_episodes


@pytest.mark.parametrize("hops", [1, 2, 3, 4])
def test_oracle_solves_through_the_env(cache_dir, hops):
    env = gym.make("igpo/SynthMultiHop-v0", num_docs=DOCS, hops=hops, num_questions=100, hard_queries=hops % 2 == 0,
                   question_seed=hops, cache_dir=cache_dir)
    assert _run_oracle(env, 100) >= 0.99


def test_make_synth_env_passes_env_kwargs_and_shares_the_world(cache_dir):
    env = make_synth_env(num_docs=DOCS, hops=[1, 2], num_questions=30, cache_dir=cache_dir, protocol="tool_call",
                         topk=5, max_turns=4, format_penalty=-1.0)
    assert (env.protocol, env.topk, env.max_turns, env.format_penalty) == ("tool_call", 5, 4, -1.0)
    assert len(env.items) == 30 and {q.metadata["hops"] for q in env.items} == {1, 2}
    other = make_synth_env(num_docs=DOCS, hops=3, split="eval", num_questions=10, cache_dir=cache_dir)
    assert other.retriever is env.retriever  # one world and one index per process for the same arguments
    assert other.corpus_hash == env.corpus_hash


def test_retriever_threads_default_to_serial_search(cache_dir):
    """BM25 searches run bm25s's serial kernel unless asked otherwise: its parallel kernel was ~40x slower per query
    on this shared 2-core machine. Same results either way."""
    serial = make_synth_env(num_docs=DOCS, num_questions=5, cache_dir=cache_dir)
    parallel = make_synth_env(num_docs=DOCS, num_questions=5, cache_dir=cache_dir, retriever_threads=2)
    assert serial.retriever.n_threads == 1 and parallel.retriever.n_threads == 2
    queries = [item.question for item in serial.items]
    assert [[p.id for p in ps] for ps in serial.retriever.search(queries, 3)] == \
        [[p.id for p in ps] for ps in parallel.retriever.search(queries, 3)]
    with pytest.raises(ValueError, match="retriever_threads"):
        make_synth_env(num_docs=DOCS, num_questions=5, cache_dir=cache_dir, retriever_threads=0)
    with pytest.raises(TypeError, match="retriever_threads"):
        make_synth_env(num_docs=DOCS, num_questions=5, cache_dir=cache_dir, retriever_threads=1.5)


def test_vector_env_runs_the_oracle_in_batch(cache_dir):
    envs = gym.make_vec("igpo/SynthMultiHop-v0", num_envs=4, vectorization_mode="vector_entry_point",
                        num_docs=DOCS, hops=2, num_questions=8, cache_dir=cache_dir)
    envs.reset(seed=0, options={"question_index": [0, 1, 2, 3]})
    items = envs.unwrapped.envs
    plans = [env.item.metadata["oracle_queries"] for env in items]
    for hop in range(2):
        _, _, terminated, _, info = envs.step([f"<search> {plan[hop]} </search>" for plan in plans])
        assert not terminated.any()
    assert list(info["gold_recall"]) == [1.0] * 4


def test_env_checker_passes(cache_dir):
    from gymnasium.utils.env_checker import check_env

    env = gym.make("igpo/SynthMultiHop-v0", num_docs=DOCS, num_questions=20, cache_dir=cache_dir, hard_queries=True)
    check_env(env.unwrapped)


def test_make_question_walks_a_given_path_and_rejects_bad_ones(world):
    item = world.make_question("film", 3, ["director", "birthplace", "mayor", "birth_year"])
    assert item.question.startswith("In which year was the mayor of the birthplace of the director of ")
    assert item.metadata["hops"] == 4 and item.metadata["answer_passage_id"] is None
    for bad in (["release_year", "director"], ["birthplace"], ["directed"], []):
        with pytest.raises(ValueError, match="relation"):
            world.make_question("film", 3, bad)
    with pytest.raises(ValueError, match="no 'film' entity"):
        world.make_question("film", 10**6, ["director"])
