"""Gymnasium search-QA environments for multi-turn search agents (IGPO, arXiv 2510.14967).

Importing this package registers every ``igpo/...`` environment id with Gymnasium.
"""

import gymnasium as _gym


def _register(env_id: str, entry_point: str, vector_entry_point: str, **kwargs) -> None:
    # Entry points by string path: specs stay JSON-serialisable and `import igpo_envs` stays light.
    # max_episode_steps=None: the env truncates itself at max_turns.
    _gym.register(env_id, entry_point=entry_point, vector_entry_point=f"igpo_envs.vector:{vector_entry_point}",
                  max_episode_steps=None, kwargs=kwargs)


_register("igpo/SearchQA-v0", "igpo_envs.env:SearchQAEnv", "make_search_qa_vector_env")
for _name, _source in {"NQ": "nq", "TriviaQA": "tq", "PopQA": "popqa", "HotpotQA": "hotpotqa", "2Wiki": "2wiki",
                       "Musique": "musique", "Bamboogle": "Bamboogle"}.items():
    _register(f"igpo/{_name}-v0", "igpo_envs.tasks.paper:make_paper_env", "make_paper_vector_env",
              data_source=_source)
_register("igpo/HotpotQA-Distractor-v0", "igpo_envs.tasks.hotpotqa:make_hotpotqa_distractor_env",
          "make_hotpotqa_distractor_vector_env")
_register("igpo/SynthMultiHop-v0", "igpo_envs.tasks.synthetic:make_synth_env", "make_synth_vector_env")
