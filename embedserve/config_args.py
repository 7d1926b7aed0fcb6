"""Turn a frozen config dataclass into argparse options and back, so the CLI stays thin.

Each field `some_name` becomes `--some-name`, typed from its annotation, defaulting to the
dataclass default; booleans get `--x/--no-x`, Literal fields their choices, tuples a comma-separated
list (`--mean 0.5,0.5,0.5`), and every option the comment its field carries in the config's source
as its help text (one place to document a field).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import io
import tokenize
import types
import typing
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def _comma_list(item: Any):
    """The parser of a tuple field: "0.5,0.4,0.3" -> (0.5, 0.4, 0.3), each part parsed as `item`."""

    def parse(text: str) -> tuple:
        try:
            return tuple(item(part.strip()) for part in text.split(",") if part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {item.__name__} values, not {text!r}") from None

    parse.__name__ = f"comma-separated {item.__name__} list"  # what argparse names in its error
    return parse


def _parser_for(annotation: Any):
    """The callable that parses a command-line string for a field of type `annotation`."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _parser_for(inner[0]) if len(inner) == 1 else str
    if typing.get_origin(annotation) is tuple:
        return _comma_list(args[0] if args else str)
    if typing.get_origin(annotation) is typing.Literal:
        return type(args[0])
    if annotation in (int, float, str, Path):
        return annotation
    return str


@lru_cache
def _class_comments(cls: type) -> dict[str, str]:
    """field name -> the comment after it in the class body of `cls` (`name: type = value  # comment`)."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    comments, line_name = {}, {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        row = token.start[0]
        if token.type == tokenize.NAME and row not in line_name and token.line[: token.start[1]].strip() == "":
            line_name[row] = token.string  # the first name on a line: the field it declares, if any
        elif token.type == tokenize.COMMENT and row in line_name:
            comments.setdefault(line_name[row], token.string.lstrip("# ").strip())
    return comments


def field_help(config_cls: type, name: str) -> str:
    """The comment of field `name`, from the nearest class in `config_cls`'s hierarchy that declares it."""
    for cls in config_cls.__mro__:
        if name in getattr(cls, "__annotations__", {}):
            comment = _class_comments(cls).get(name)
            if comment:
                return comment
    return ""


def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type, skip: tuple[str, ...] = ()) -> None:
    hints = typing.get_type_hints(config_cls)
    group = parser.add_argument_group(f"{config_cls.__name__} fields")
    for f in dataclasses.fields(config_cls):
        if f.name in skip or not f.init:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        flag = "--" + f.name.replace("_", "-")
        annotation = hints[f.name]
        if typing.get_origin(annotation) in (list, dict):
            continue  # lists and mappings are set in code, not on the command line
        about = field_help(config_cls, f.name)
        help_text = f"{about} (default: {default})" if about else f"(default: {default})"
        help_text = help_text.replace("%", "%%")  # argparse formats help with %
        if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in typing.get_args(annotation):
            annotation = next(a for a in typing.get_args(annotation) if a is not type(None))  # None is the default's
        if annotation is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
            continue
        choices = typing.get_args(annotation) if typing.get_origin(annotation) is typing.Literal else None
        group.add_argument(flag, type=_parser_for(annotation), default=None, choices=choices, help=help_text)


def config_from_args(config_cls: type[T], args: argparse.Namespace, base: T | None = None) -> T:
    """A `config_cls` from `base` (or the defaults) with every option the user gave applied."""
    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(config_cls)
        if f.init and getattr(args, f.name, None) is not None
    }
    return dataclasses.replace(base, **given) if base is not None else config_cls(**given)
