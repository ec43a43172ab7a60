"""Command-line flags made from a settings dataclass: a flag a field, named, typed and defaulted by it.

``add_flags(parser, TrainSettings)`` adds ``--batch-size`` for the field ``batch_size`` with the
field's type, default and description (``decap_core.settings.described``); ``settings_from`` builds
the dataclass back from the parsed flags. The defaults live in the dataclass alone.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Collection, TypeVar

Settings = TypeVar("Settings")


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _flag_fields(settings_type: type, skip: Collection[str]) -> list[dataclasses.Field]:
    """The fields that become flags: those with a default, less ``skip``."""
    return [f for f in dataclasses.fields(settings_type) if f.default is not dataclasses.MISSING and f.name not in skip]


def add_flags(parser: argparse.ArgumentParser, settings_type: type, skip: Collection[str] = ()) -> None:
    """A flag for every field of ``settings_type`` that has a default (bools: ``--x`` / ``--no-x``)."""
    hints = typing.get_type_hints(settings_type)
    for field in _flag_fields(settings_type, skip):
        kind = hints[field.name]
        shown = "" if field.default is None or kind is bool else f"(default: {field.default})"
        help_text = " ".join(part for part in (field.metadata.get("help", ""), shown) if part)
        options: dict[str, Any] = {"default": field.default, "help": help_text or None}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        else:  # int, float, str, or one of them or None
            options["type"] = next((k for k in typing.get_args(kind) if k is not type(None)), kind)
        parser.add_argument(flag_name(field.name), **options)


def settings_from(settings_type: type[Settings], args: argparse.Namespace, **given: Any) -> Settings:
    """``settings_type`` from the parsed flags named after its fields; ``given`` values take precedence."""
    parsed = {f.name: getattr(args, f.name) for f in dataclasses.fields(settings_type) if hasattr(args, f.name)}
    return settings_type(**{**parsed, **given})


def changed_flags(settings_type: type, args: argparse.Namespace, skip: Collection[str] = ()) -> list[str]:
    """The flags of ``settings_type``'s fields that the command line set to other than their default."""
    return [flag_name(f.name) for f in _flag_fields(settings_type, skip) if getattr(args, f.name) != f.default]


def add_run_flags(parser: argparse.ArgumentParser, clip_use: str) -> None:
    """The flags that name a captioning run to score: its captions output and its CLIP (for ``clip_use``)."""
    parser.add_argument("--captions", required=True, help="captions output directory written by decap caption")
    parser.add_argument("--clip-model", default=None, help=f"the run's CLIP architecture ({clip_use})")
    parser.add_argument("--clip-checkpoint", default=None, help="the run's CLIP weights (path or fsspec URL)")
    parser.add_argument("--toy-truth", default=None,
                        help="the toy world's archive Parquet (glob) of key + caption: objects named, exact sets and "
                             "invented objects")
