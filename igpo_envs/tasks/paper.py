"""The IGPO paper's seven QA datasets (``igpo/NQ-v0`` ... ``igpo/Bamboogle-v0``) from its shipped eval parquet."""

from __future__ import annotations

from typing import Any

from igpo_envs.env import SearchQAEnv
from igpo_envs.tasks.datasets import data_path, load_verl_parquet
from igpo_envs.types import QAItem

#: The paper's seven datasets: env id suffix -> ``data_source`` value in the shipped parquet files.
PAPER_DATASETS = {
    "NQ": "nq",
    "TriviaQA": "tq",
    "PopQA": "popqa",
    "HotpotQA": "hotpotqa",
    "2Wiki": "2wiki",
    "Musique": "musique",
    "Bamboogle": "Bamboogle",
}
PAPER_SPLITS = ("dev", "test")


def load_paper_split(data_source: str, split: str = "test") -> list[QAItem]:
    """One of the paper's seven datasets from the shipped IGPO eval parquet (``split="test"`` or ``"dev"``)."""
    if split not in PAPER_SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {PAPER_SPLITS}")
    if data_source not in PAPER_DATASETS.values():
        raise ValueError(f"unknown data_source {data_source!r}; expected one of {sorted(PAPER_DATASETS.values())}")
    return load_verl_parquet(data_path(f"igpo_eval/{split}.parquet"), data_source=data_source)


def make_paper_env(data_source: str, split: str = "test", **kwargs: Any):
    """Entry point of ``igpo/NQ-v0`` ... ``igpo/Bamboogle-v0``: a `SearchQAEnv` over a shipped paper split.

    There is no corpus offline (the paper searched the web): pass ``corpus=``, ``retriever_url=`` or ``retriever=``.
    """
    questions = kwargs.pop("questions", None)  # `None` only: an empty list is an error, not "use the shipped split"
    return SearchQAEnv(questions=load_paper_split(data_source, split) if questions is None else questions, **kwargs)
