"""The demo's quality numbers over several seeds: each seed's row, and the mean and range of each.

Run as ``python -m benchmarks.quality_over_seeds --seeds 0 1 2 --workdir runs/seeds``. Each seed is a
whole ``decap demo --fresh --seed N`` (CLIP, memory, decoder, tau choice and held-out sets all drawn
from that seed) in ``WORKDIR/seed-N``; a seed whose ``report.json`` is already there is read, not
rerun (``--rerun`` retrains). ``--parallel K`` runs K demos at once, each on one thread. Writes
``WORKDIR/quality.md`` and prints it.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from statistics import mean
from typing import Any

COLUMNS = (  # (heading, how to read it from a demo's report.json)
    ("one object", lambda r: r["clip"]["single_object_top1"]),
    ("two objects", lambda r: r["clip"]["two_object_top1"]),
    ("centroid distance", lambda r: r["clip"]["centroid_distance"]),
    ("tau", lambda r: r["tau"]),
    ("pd", lambda r: _row(r["table"], "pd", r["tau"])),
    ("nnd", lambda r: _row(r["table"], "nnd")),
    ("clipre", lambda r: _row(r["table"], "clipre")),
    ("vd", lambda r: _row(r["table"], "vd")),
    ("pd - vd", lambda r: _row(r["table"], "pd", r["tau"]) - _row(r["table"], "vd")),
    ("pd OOD", lambda r: _row(r["ood_table"], "pd", r["tau"])),
    ("nnd OOD", lambda r: _row(r["ood_table"], "nnd")),
    ("clipre OOD", lambda r: _row(r["ood_table"], "clipre")),
    ("vd OOD", lambda r: _row(r["ood_table"], "vd")),
    ("minutes", lambda r: r["seconds"] / 60),
)
SHARES = {"one object", "two objects", "pd", "nnd", "clipre", "vd", "pd - vd", "pd OOD", "nnd OOD", "clipre OOD",
          "vd OOD"}


def _row(table: list[dict[str, Any]], strategy: str, tau: float | None = None) -> float:
    return next(row["object_recall"] for row in table if row["strategy"] == strategy and row["tau"] == tau)


def run_seed(seed: int, workdir: pathlib.Path, rerun: bool, threads: int | None) -> dict[str, Any]:
    """One seed's demo report, run unless it is there."""
    work = workdir / f"seed-{seed}"
    report = work / "report.json"
    if rerun or not report.exists():
        work.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
        with open(work / "demo.log", "w") as log:
            subprocess.run([sys.executable, "-m", "jobs.cli", "demo", "--fresh", "--seed", str(seed),
                            "--workdir", str(work)], check=True, stdout=log, stderr=subprocess.STDOUT, env=env)
    return json.loads(report.read_text())


def _cell(heading: str, value: float) -> str:
    if heading in SHARES:
        return f"{100 * value:.1f}"
    return f"{value:.3g}" if heading != "minutes" else f"{value:.1f}"


def format_table(reports: dict[int, dict[str, Any]]) -> str:
    """Per seed, then mean and range (min-max); object shares in percent."""
    headings = [heading for heading, _ in COLUMNS]
    values = {seed: [read(report) for _, read in COLUMNS] for seed, report in reports.items()}
    lines = ["| seed | " + " | ".join(headings) + " |", "|" + "---|" * (len(headings) + 1)]
    for seed, row in values.items():
        lines.append(f"| {seed} | " + " | ".join(_cell(h, v) for h, v in zip(headings, row)) + " |")
    columns = list(zip(*values.values()))
    lines.append("| mean | " + " | ".join(_cell(h, mean(c)) for h, c in zip(headings, columns)) + " |")
    lines.append("| range | " + " | ".join(f"{_cell(h, min(c))}-{_cell(h, max(c))}"
                                            for h, c in zip(headings, columns)) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("runs/seeds"))
    parser.add_argument("--parallel", type=int, default=1, help="demos at once (each on one thread when above 1)")
    parser.add_argument("--rerun", action="store_true", help="rerun seeds whose report is already there")
    args = parser.parse_args(argv)
    threads = 1 if args.parallel > 1 else None
    with ThreadPoolExecutor(args.parallel) as pool:
        reports = dict(zip(args.seeds, pool.map(lambda s: run_seed(s, args.workdir, args.rerun, threads), args.seeds)))
    table = format_table(reports)
    (args.workdir / "quality.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
