"""Run every benchmark and rewrite BENCHMARKS.md with the machine and the command.

Add a benchmark by writing a module with ``run() -> str`` (a Markdown section that compares
against a baseline measured in the same run) and listing it in ``BENCHMARKS``.
"""
from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time

import torch

BENCHMARKS = [
    "benchmarks.bench_text_encoding",
    "benchmarks.bench_encode_step",
    "benchmarks.bench_memory",
    "benchmarks.bench_decoding",
    "benchmarks.bench_projection",
    "benchmarks.bench_caption",
    "benchmarks.bench_training",  # last: it sets torch to one thread
]


def describe_machine() -> str:
    """``nproc``, CPU model, RAM, and the versions that set the speed."""
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    ram_kib = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    return (f"- {os.cpu_count()} CPU cores (`nproc`), {cpu}, {ram_kib / 2**20:.1f} GiB RAM\n"
            f"- Python {platform.python_version()}, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), {platform.platform()}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these benchmark modules")
    parser.add_argument("--output", default="BENCHMARKS.md")
    args = parser.parse_args(argv)
    machine = describe_machine()  # before any benchmark changes torch's thread count
    sections = []
    for name in args.only or BENCHMARKS:
        started = time.time()
        print(f"running {name} ...", flush=True)
        sections.append(importlib.import_module(name).run())
        print(f"{name} done in {time.time() - started:.0f} s", flush=True)
    command = " ".join(["python -m benchmarks.run", *(argv if argv is not None else sys.argv[1:])])
    text = (f"# Benchmarks\n\nWritten by `{command}` on {time.strftime('%Y-%m-%d')}. The machine:\n\n"
            f"{machine}\n\nThe machine is shared and noisy: read the ratios, not the absolutes.\n\n"
            + "\n\n".join(sections) + "\n")
    with open(args.output, "w") as handle:
        handle.write(text)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
