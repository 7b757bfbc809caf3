"""Training resume states in storage, so that a retry on any worker continues where the last one stopped.

Layout::

    customizations/<id>/train-state/<step:08d>/...   what engine.training saved at that step
    customizations/<id>/train-state/latest.json      {"step": N}, written after its state is whole

A state is uploaded under its own step, then the pointer is overwritten, then older states are deleted:
whenever a worker dies, the pointer names a state that was written whole (or there is none yet).
"""

from __future__ import annotations

import json
from pathlib import Path

from common import storage as keys
from common.storage import CONTENT_TYPES, Storage
from engine import TRAIN_STATE_META as STATE_META  # written last by engine.training (adapter, optimizer, step)

POINTER = "latest.json"


def prefix_of(customization_id: str) -> str:
    return keys.customization_prefix(customization_id) + "train-state/"


def fetch(storage: Storage, customization_id: str, state_dir: Path) -> int:
    """Download the state that the pointer names into `state_dir`; return its step (0: none stored)."""
    prefix = prefix_of(customization_id)
    if not storage.exists(prefix + POINTER):
        return 0
    step = int(json.loads(storage.get_bytes(prefix + POINTER))["step"])
    step_prefix = f"{prefix}{step:08d}/"
    for key in storage.list_keys(step_prefix):
        storage.get_file(key, state_dir / key[len(step_prefix):])
    return step


def save(storage: Storage, customization_id: str, state_dir: Path) -> None:
    """Upload the state the engine just wrote to `state_dir` (called every ``checkpoint_every`` steps)."""
    prefix = prefix_of(customization_id)
    step = int(json.loads((state_dir / STATE_META).read_text())["step"])
    step_prefix = f"{prefix}{step:08d}/"
    files = sorted((p for p in state_dir.rglob("*") if p.is_file()), key=lambda p: p.name == STATE_META)
    for path in files:
        storage.put_file(path, step_prefix + path.relative_to(state_dir).as_posix(), CONTENT_TYPES.get(path.suffix))
    storage.put_bytes(json.dumps({"step": step}).encode(), prefix + POINTER, "application/json")
    for key in storage.list_keys(prefix):
        if key != prefix + POINTER and not key.startswith(step_prefix):
            storage.delete(key)


def drop(storage: Storage, customization_id: str) -> None:
    """Delete every stored state (once the customization's artifact is stored)."""
    for key in storage.list_keys(prefix_of(customization_id)):
        storage.delete(key)
