"""The demo model: a tiny random-weight SD1.5-architecture pipeline saved as a diffusers folder.

The embedded default serves it when no real model is configured; its images are noise, but it
exercises every code path (text-to-image, image-to-image and inpaint from one folder) in a
fraction of a second on a CPU. Built offline and deterministically (same seed, same weights).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

DemoFamily = Literal["sd15", "sdxl"]


def make_demo_model(dir: Path, *, family: DemoFamily = "sd15", seed: int = 0) -> Path:
    """Build the demo model into `dir` unless it is already there; return `dir`.

    The folder is written next to its final place and renamed into it, so a crash or a
    concurrent builder never leaves a half-written model that a later call would accept.
    """
    dir = Path(dir)
    if (dir / "model_index.json").is_file():
        return dir
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Deferred: torch and diffusers take seconds to import, and the CLI imports this module.
    from gateway.gpu.architectures import build_random_pipeline  # noqa: PLC0415

    pipe = build_random_pipeline("tiny-sdxl" if family == "sdxl" else "tiny-sd15", seed=seed)
    dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dir.name}-", dir=dir.parent))
    try:
        pipe.save_pretrained(staging, safe_serialization=True)
        try:
            staging.rename(dir)
        except OSError:
            # Someone else finished first (or left a folder without model_index.json).
            if not (dir / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("built demo model (%s) in %s", family, dir)
    return dir


def main_make_demo_model(dir: str) -> int:
    """Entry point of `gateway gpu make-demo-model DIR`: build it, print the path, exit status."""
    target = Path(dir)
    existed = (target / "model_index.json").is_file()
    try:
        make_demo_model(target)
    except OSError as exc:
        print(f"cannot build the demo model in {target}: {exc}", file=sys.stderr)
        return 1
    state = "already present" if existed else "built"
    print(f"demo model {state}: {target.resolve()}")
    return 0
