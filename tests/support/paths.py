"""Where the project and the shared development data are."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
KERAS_HOME = SHARED / "keras"
BUSI_SAMPLE = SHARED / "datasets" / "busi-sample"
BUSI256 = SHARED / "datasets" / "busi256"
