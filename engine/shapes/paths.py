"""Where the committed shapes world lives, and its revision (a digest of its weight files).

The revision, not the checkout's path, identifies the world in manifests and cache keys: an API, a
worker image and a developer's checkout agree on it wherever the repository sits.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "models" / "shapes"
BASE_DIR = ROOT / "base"
MOTION_DIR = ROOT / "motion-adapter"
JUDGE_DIR = ROOT / "judge"
CUSTOMIZED_DIR = ROOT / "customized"


@lru_cache
def revision(root: Path = ROOT) -> str:
    """sha256 over the world's model weight files (names and contents), first 16 hex digits."""
    digest = hashlib.sha256()
    for path in sorted((root / "base").rglob("*.safetensors")) + sorted((root / "motion-adapter").rglob("*.safetensors")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
