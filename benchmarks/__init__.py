"""Benchmarks: each module has ``run() -> str`` (a Markdown section with its baseline and ratio);
``python -m benchmarks.run`` runs them all and rewrites BENCHMARKS.md."""
import decap_core  # noqa: F401  (torchvision shim before open_clip)
