"""Made-up names for the synthetic world: words built from a small syllable set, so no real-world knowledge helps
and a tiny tokenizer covers them.

Every word is consonant-vowel syllables (``"ma" "ro"`` → ``"Maro"``); a *look-alike family* shares a stem and differs
only by a final consonant (``"Vesa"``, ``"Vesan"``, ``"Vesar"``), which BM25 treats as different tokens but a reader
(or a copying policy) easily confuses. Stems end in a vowel and variants in a consonant, so a variant can never equal
another stem.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"
SYLLABLES = tuple(c + v for c in CONSONANTS for v in VOWELS)
#: Final consonants that make look-alike variants of a stem; variant 0 is the bare stem.
CODAS = ("", "n", "r", "k", "l", "m", "t")
MAX_LOOKALIKES = len(CODAS) - 1


@lru_cache(maxsize=4)
def word_list(syllables: int) -> tuple[str, ...]:
    """Every word of exactly ``syllables`` CV syllables, in a fixed order (70, 4,900, 343,000 words for 1-3)."""
    words = [""]
    for _ in range(syllables):
        words = [w + s for w in words for s in SYLLABLES]
    return tuple(words)


@lru_cache(maxsize=4)
def stem_stable_words(syllables: int) -> tuple[str, ...]:
    """The words of `word_list` that the BM25 retriever's Snowball stemmer leaves intact with every coda, so two
    look-alikes never collapse into one index term (all two-syllable words qualify; many longer ones do not)."""
    import Stemmer  # PyStemmer, the stemmer igpo_envs.search.bm25 indexes with

    stem = Stemmer.Stemmer("english").stemWords
    words = word_list(syllables)
    variants = [w + c for w in words for c in CODAS]
    stable = [a == b for a, b in zip(variants, stem(variants))]
    return tuple(w for i, w in enumerate(words) if all(stable[i * len(CODAS):(i + 1) * len(CODAS)]))


def draw_word_pools(sizes: dict[str, int], rng: np.random.Generator) -> dict[str, list[str]]:
    """Disjoint pools of distinct capitalised words, one per name, drawn from the shortest words that suffice.

    Two-syllable words are used first (4,900 of them: enough for ~3M passages with ``distractors=2``, ~1M with
    none); longer words only join when the pools need more, which keeps small worlds' vocabulary small.
    """
    total = sum(sizes.values())
    candidates: list[str] = []
    syllables = 2
    while len(candidates) < total:
        candidates.extend(stem_stable_words(syllables))
        syllables += 1
    chosen = rng.choice(len(candidates), size=total, replace=False)
    pools, start = {}, 0
    for name, size in sizes.items():
        pools[name] = [candidates[i].capitalize() for i in chosen[start:start + size]]
        start += size
    return pools


def pool_size_for_pairs(num_pairs: int, minimum: int = 4) -> int:
    """Smallest pool ``n`` whose ordered pairs (``n * n``) leave comfortable room for ``num_pairs`` distinct ones."""
    return max(minimum, int(np.ceil(np.sqrt(1.5 * max(num_pairs, 1)))) + 1)


def sample_distinct_pairs(num_pairs: int, pool: int, rng: np.random.Generator,
                          unordered: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``num_pairs`` distinct index pairs into a pool of size ``pool`` (vectorised; ``unordered``: {a, b} with a < b,
    for names whose two words BM25 sees as one bag)."""
    if unordered:
        a, b = np.triu_indices(pool, k=1)
        if num_pairs > len(a):
            raise ValueError(f"pool of {pool} words has only {len(a)} unordered pairs, need {num_pairs}")
        pick = rng.choice(len(a), size=num_pairs, replace=False)
        return a[pick], b[pick]
    if num_pairs > pool * pool:
        raise ValueError(f"pool of {pool} words has only {pool * pool} pairs, need {num_pairs}")
    pick = rng.choice(pool * pool, size=num_pairs, replace=False)
    return pick // pool, pick % pool
