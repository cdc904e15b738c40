"""Gymnasium search-QA environments for multi-turn search agents (IGPO, arXiv 2510.14967).

Importing this package registers every ``igpo/...`` environment id with Gymnasium.
"""

from functools import partial as _partial

import gymnasium as _gym


def _make_vector(env_fn: str, num_envs: int, **kwargs):
    from igpo_envs.vector import SearchQAVectorEnv  # lazy: keeps `import igpo_envs` light

    return SearchQAVectorEnv(num_envs=num_envs, env_fn=env_fn, **kwargs)


def _register(env_id: str, entry_point: str, **kwargs) -> None:
    # max_episode_steps=None: the env truncates itself at max_turns.
    _gym.register(env_id, entry_point=entry_point, vector_entry_point=_partial(_make_vector, entry_point),
                  max_episode_steps=None, kwargs=kwargs)


_register("igpo/SearchQA-v0", "igpo_envs.env:SearchQAEnv")
for _name, _source in {"NQ": "nq", "TriviaQA": "tq", "PopQA": "popqa", "HotpotQA": "hotpotqa", "2Wiki": "2wiki",
                       "Musique": "musique", "Bamboogle": "Bamboogle"}.items():
    _register(f"igpo/{_name}-v0", "igpo_envs.tasks.datasets:make_paper_env", data_source=_source)
_register("igpo/HotpotQA-Distractor-v0", "igpo_envs.tasks.hotpotqa:make_hotpotqa_distractor_env")
_register("igpo/SynthMultiHop-v0", "igpo_envs.tasks.synthetic:make_synth_env")
