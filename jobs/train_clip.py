"""Train the toy world's tiny CLIP contrastively, with the temperature fixed at CLIP's final value.

The command line of ``decap_core.clip_training``: its flags are ``ClipTrainSettings``' fields.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from decap_core import clip_training
from decap_core.clip_training import ClipTrainSettings, format_report
from decap_core.errors import DecapError
from jobs.flags import add_flags, settings_from


def train_clip(out: str, **settings: Any) -> dict[str, float]:
    """``clip_training.train_clip`` with ``ClipTrainSettings`` fields as keywords (as the demo calls it)."""
    return clip_training.train_clip(out, ClipTrainSettings(**settings))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="decap train-clip", description=clip_training.__doc__)
    parser.add_argument("--out", required=True, help="checkpoint URL to write (.safetensors)")
    add_flags(parser, ClipTrainSettings)
    args = parser.parse_args(argv)
    report = clip_training.train_clip(args.out, settings_from(ClipTrainSettings, args))
    print(format_report(report))
    print(json.dumps(report))


if __name__ == "__main__":
    try:
        main()
    except DecapError as error:
        sys.exit(f"train-clip: error: {error}")
