"""The ``decap`` command: one subcommand per job; user errors print one line, not a traceback."""
from __future__ import annotations

import importlib
import logging
import sys

from decap_core.errors import DecapError

COMMANDS = {
    "demo": ("jobs.demo", "run the main job end to end on the toy world"),
    "train-clip": ("jobs.train_clip", "train the toy world's tiny CLIP"),
    "train-decoder": ("jobs.train_decoder", "train the DeCap decoder on text only"),
    "caption": ("pipelines.caption", "caption image archives or image embeddings in bulk (Beam pipeline)"),
    "build-memory": ("pipelines.build_memory", "build a support memory from text corpora (Beam pipeline)"),
    "make-shards": ("pipelines.make_train_shards", "write the decoder's WebDataset train shards (Beam pipeline)"),
    "evaluate": ("jobs.evaluate", "score a captions output against references: COCO metrics, CLIPScore, toy truth"),
    "report": ("jobs.report", "one HTML page on a captions output: modality gap, ablations, examples"),
}


class _BeamImportNoise(logging.Filter):
    """Drops the warning Beam logs on import when Google Cloud's optional client is absent (not used here)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "apitools not found" not in record.getMessage()


def usage() -> str:
    lines = ["usage: decap COMMAND [options]   (decap COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<15}{summary}" for name, (_, summary) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"decap: error: unknown command {command!r}\n{usage()}", file=sys.stderr)
        return 2
    logging.getLogger().addFilter(_BeamImportNoise())
    module = importlib.import_module(COMMANDS[command][0])
    try:
        module.main(rest)
    except DecapError as error:
        print(f"decap {command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"decap {command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
