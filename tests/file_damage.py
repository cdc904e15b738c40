"""Ways a cached file gets damaged on disk, for the self-healing cache tests."""

from __future__ import annotations

from pathlib import Path

DAMAGES = ["truncate", "delete", "garble", "edit"]


def damage(path: Path, how: str) -> None:
    """Truncate to half, delete, garble every byte, or ``edit``: same size, still parseable (a ``.npy`` array
    reversed, or one letter changed), so only a content check can tell."""
    import numpy as np

    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "delete":
        path.unlink()
    elif how == "garble":
        path.write_bytes(bytes((b * 31 + 7) % 256 for b in data))
    elif how == "edit":
        if path.suffix == ".npy":
            np.save(path, np.load(path)[::-1].copy())
        else:
            i = data.rindex(b"e")
            path.write_bytes(data[:i] + b"o" + data[i + 1 :])
    else:
        raise ValueError(f"unknown damage {how!r}")
