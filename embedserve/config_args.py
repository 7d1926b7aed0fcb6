"""Turn a frozen config dataclass into argparse options and back, so the CLI stays thin.

Each field `some_name` becomes `--some-name`, typed from its annotation, defaulting to the
dataclass default; booleans get `--x/--no-x`.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def _parser_for(annotation: Any):
    """The callable that parses a command-line string for a field of type `annotation`."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _parser_for(inner[0]) if len(inner) == 1 else str
    if typing.get_origin(annotation) is typing.Literal:
        return type(args[0])
    if annotation in (int, float, str, Path):
        return annotation
    return str


def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type, skip: tuple[str, ...] = ()) -> None:
    hints = typing.get_type_hints(config_cls)
    group = parser.add_argument_group(f"{config_cls.__name__} fields")
    for f in dataclasses.fields(config_cls):
        if f.name in skip or not f.init:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        flag = "--" + f.name.replace("_", "-")
        annotation = hints[f.name]
        if typing.get_origin(annotation) in (tuple, list, dict):
            continue  # sequences (e.g. per-channel mean) are set in code, not on the command line
        if annotation is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=f"(default: {default})")
            continue
        choices = typing.get_args(annotation) if typing.get_origin(annotation) is typing.Literal else None
        group.add_argument(
            flag, type=_parser_for(annotation), default=None, choices=choices, help=f"(default: {default})"
        )


def config_from_args(config_cls: type[T], args: argparse.Namespace, base: T | None = None) -> T:
    """A `config_cls` from `base` (or the defaults) with every option the user gave applied."""
    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(config_cls)
        if f.init and getattr(args, f.name, None) is not None
    }
    return dataclasses.replace(base, **given) if base is not None else config_cls(**given)
