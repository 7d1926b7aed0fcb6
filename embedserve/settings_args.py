"""The server's settings as `embedserve serve` options, derived from `Settings` so that none is missed.

Each field `some_name` becomes `--some-name` (booleans `--some-name/--no-some-name`), its help the
field's description with its environment variable and default, as TEI's and infinity's --help show
them. A value is checked as the field checks it when it is parsed, and handed to the server through
its environment variable: every worker process reads its settings from the environment on its own.
"""

from __future__ import annotations

import argparse
import typing
from pathlib import Path

from pydantic import SecretStr, TypeAdapter, ValidationError

from serving.settings import Settings
from serving.settings_doc import default_text, env_name

# Earlier names of an option, still accepted beside the derived one.
ALIASES = {"artifacts_dir": ("--artifacts",)}


def _checker(name: str):
    """argparse type for field `name`: the text as given, once the field's own validation accepts it."""
    field = Settings.model_fields[name]
    adapter = TypeAdapter(typing.Annotated[field.annotation, *field.metadata] if field.metadata else field.annotation)

    def check(text: str) -> str:
        try:
            adapter.validate_python(text, strict=False)
        except ValidationError as e:
            raise argparse.ArgumentTypeError(f"{e.errors()[0]['msg']}, not {text!r}") from None
        return text

    return check


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """An option per `Settings` field on `parser`, each None unless given."""
    group = parser.add_argument_group("settings", "each also read from its environment variable; an option wins over it")
    for name, field in Settings.model_fields.items():
        flags = ("--" + name.replace("_", "-"), *ALIASES.get(name, ()))
        is_secret = SecretStr in (field.annotation, *typing.get_args(field.annotation))
        secret = " (an option shows in the process list: prefer the variable)" if is_secret else ""
        help_text = f"{field.description}{secret} [env: {env_name(name)}] [default: {default_text(field)}]"
        help_text = help_text.replace("%", "%%")  # argparse formats help with %
        if field.annotation is bool:
            group.add_argument(*flags, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
            continue
        choices = typing.get_args(field.annotation) if typing.get_origin(field.annotation) is typing.Literal else None
        group.add_argument(*flags, dest=name, type=_checker(name), default=None, choices=choices, help=help_text)


def settings_environment(args: argparse.Namespace) -> dict[str, str]:
    """The environment variables that the options given in `args` set, as the server reads them."""
    given = {}
    for name, field in Settings.model_fields.items():
        value = getattr(args, name, None)
        if value is None:
            continue
        if isinstance(value, bool):
            value = str(value).lower()
        elif field.annotation in (Path, Path | None) and value:
            value = str(Path(value).resolve())  # the workers see the folder the command was given
        given[env_name(name)] = value
    return given
