"""Training checkpoints: run keys, atomic writes, and the random state that exact resume needs.

A run's checkpoints live in ``<workdir>/checkpoints/<run-key>/``. The run key hashes
everything that decides the trained weights (the patch spec, splits, model and training
settings, the
store digest, the resolved device and the initial weights), so re-running after a crash
resumes the same run, while a changed config, new data or another starting point starts a
fresh one. ``last.pt`` is replaced atomically (write to a temporary file in the same
directory, fsync, rename): a kill at any moment leaves either the previous or the new
checkpoint, never a torn one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stpipe.core.errors import StoreError

LAST = "last.pt"


def run_key(
    sections: Mapping[str, Mapping[str, Any]],
    *,
    store_digest: str,
    device: str,
    init_digest: str = "",
) -> str:
    """16 hex digits identifying a training run (see the module docstring).

    ``sections``: what decides the weights, as JSON-able mappings (e.g. ``{"patches": ...,
    "split": ..., "model": ..., "train": ...}``).
    """
    identity = {
        "sections": sections,
        "store": store_digest,
        "device": device,
        "init": init_digest,
    }
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 (16 hex digits) of a state dict's names, dtypes, shapes and values."""
    h = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu()
        h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        # reshape + clone: a dense 1-D copy (size-1 dims may keep odd strides otherwise)
        h.update(tensor.reshape(-1).clone().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def save_checkpoint(path: Path, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` (tensors, numbers, strings, lists, dicts) to ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(dict(payload), buffer)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(buffer.getbuffer())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """The payload saved at ``path``, or None when there is none; StoreError if unreadable."""
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for a corrupt file
        raise StoreError(
            f"{path}: checkpoint cannot be read ({type(exc).__name__}: {exc}); delete it to "
            "start the run afresh"
        ) from exc


def capture_rng() -> dict[str, Any]:
    """The state of python's, numpy's, torch's and (if present) CUDA's global generators."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": _python_state_to_list(random.getstate()),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state_to_list(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]
