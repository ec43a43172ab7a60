"""Command-line options of the pipelines: each pipeline's own flags, and Beam's for the rest.

Each pipeline parses its own flags with its own ``argparse`` parser, so its ``--help`` lists only
them, and hands what remains to Beam's ``PipelineOptions``. A flag neither knows (``--num-shard``
for ``--num-shards``) is an error, not a warning. Without ``--runner`` a pipeline runs on Beam's
in-process ``FnApiRunner``, which never reaches for the network; ``--runner=DaskRunner`` is short
for Beam's Dask runner.
"""
from __future__ import annotations

import argparse
import importlib
from typing import Sequence

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.runner import create_runner

from decap_core.errors import DecapError

DEFAULT_RUNNER = "FnApiRunner"
RUNNER_ALIASES = {"DaskRunner": "apache_beam.runners.dask.dask_runner.DaskRunner"}
BEAM_EPILOG = ("Any other flag is a Beam pipeline option (--runner, --direct_num_workers, --setup_file, the runner's "
               f"own); without --runner: {DEFAULT_RUNNER}, in process. --runner=DaskRunner runs on a dask.distributed "
               "cluster (--dask_client_address=HOST:PORT).")


def new_parser(prog: str, description: str | None = None) -> argparse.ArgumentParser:
    """A parser for one pipeline's own flags (no abbreviations: a mistyped flag is never guessed)."""
    return argparse.ArgumentParser(prog=prog, description=description, epilog=BEAM_EPILOG, allow_abbrev=False,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> tuple[argparse.Namespace, PipelineOptions]:
    """The pipeline's own arguments and the Beam options of the rest; an unknown flag is a ``DecapError``.

    A runner named by module path (``DaskRunner`` is one) is imported first, so that Beam knows its
    flags. On Dask each element our pipelines create is a whole file or shard, so unless told
    otherwise every one gets its own partition (``--dask_partition_size=1``; Beam's default, 128
    elements a partition, would give one worker all of them).
    """
    args, rest = parser.parse_known_args(list(argv) if argv is not None else None)
    runner = PipelineOptions(rest).view_as(StandardOptions).runner or DEFAULT_RUNNER
    runner = RUNNER_ALIASES.get(runner, runner)
    if "." in runner:
        module = runner.rsplit(".", 1)[0]
        try:
            importlib.import_module(module)
        except ImportError as error:
            extra = " (pip install -e '.[dask]')" if "dask" in module else ""
            raise DecapError(f"runner {runner} cannot be loaded{extra}: {error}") from None
    try:
        create_runner(runner)  # Beam's own check of the name; the pipeline makes its own instance
    except (ValueError, ImportError) as error:
        raise DecapError(f"--runner={runner}: {str(error).splitlines()[0]}") from None
    if runner.endswith("DaskRunner") and not any(t.startswith(("--dask_npartitions", "--dask_partition_size"))
                                                 for t in rest):
        rest = [*rest, "--dask_partition_size=1"]
    options = PipelineOptions(rest)
    unknown = set(options.get_all_options(retain_unknown_options=True)) - set(options.get_all_options())
    flags = [token.split("=", 1)[0] for token in rest if token.startswith("--")]
    named = [flag for flag in flags if flag[2:].replace("-", "_") in unknown]
    if unknown:
        raise DecapError(f"unknown option {(named or ['--' + min(unknown)])[0]} ({parser.prog} --help lists its own; "
                         "any other flag must be a Beam pipeline option)")
    options.view_as(StandardOptions).runner = runner
    return args, options
