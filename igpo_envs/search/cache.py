"""A content-keyed index directory in the cache, built once, atomically, and rebuilt if damaged."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["cached_index_dir"]


def cached_index_dir(name: str, build: Callable[[Path], object], *, cache_dir: str | Path | None = None) -> Path:
    """``cache_dir/name`` (default: the index cache), built by ``build(tmp_dir)`` if it has no intact index yet.

    The build goes to a private directory renamed into place, so a crash or a concurrent builder never leaves a
    half-written index where a later start would trust it. A cached index damaged since it was built (see
    `manifest.index_is_intact`) is removed with a warning and built again: every engine's auto-cache heals itself.
    """
    from igpo_envs.search.bm25 import default_cache_dir
    from igpo_envs.search.manifest import MANIFEST_NAME, index_is_intact

    out = (Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()) / name
    if (out / MANIFEST_NAME).is_file() and not index_is_intact(out):
        pass  # warned and removed by index_is_intact: rebuilt below
    if not (out / MANIFEST_NAME).is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".building-"))
        try:
            build(tmp)
            if out.exists() and not (out / MANIFEST_NAME).is_file():  # a stale, unfinished directory
                shutil.rmtree(out)
            tmp.rename(out)
        except OSError:
            if not (out / MANIFEST_NAME).is_file():  # lost a race to an identical build: fine
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out
