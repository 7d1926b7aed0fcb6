"""docs/configuration.md, written from `Settings` so that the reference cannot drift from the code.

    python -m serving.settings_doc     # rewrites docs/configuration.md

Each setting's name, environment variable, type, default and description come from its field;
`embedserve serve --help` shows the same environment names and defaults through `env_name` and
`default_text`.
"""

from __future__ import annotations

import sys
import types
import typing
from pathlib import Path

from annotated_types import Ge, Gt, Le, Lt
from pydantic import SecretStr
from pydantic.fields import FieldInfo

from serving.settings import Settings

DOC_PATH = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
REGENERATE = "python -m serving.settings_doc"

# A unit a setting's name ends with, spelled out in its type (`request_timeout_s`: seconds).
UNITS = {"_bytes": "bytes", "_pixels": "pixels", "_ms": "milliseconds", "_s": "seconds"}
BOUNDS = ((Ge, "ge", "≥"), (Gt, "gt", ">"), (Le, "le", "≤"), (Lt, "lt", "<"))

INTRO = f"""\
# Configuration

<!-- Written by `{REGENERATE}` from serving/settings.py; edit the fields' descriptions there, not this file. -->

The server reads its settings once, at start, from environment variables named
`EMBEDSERVE_` + the setting's name in capitals (`max_queue` is `EMBEDSERVE_MAX_QUEUE`).
`embedserve serve` also takes each as a flag, `--` + the name with dashes (`--max-queue 64`,
`--no-batching` for a boolean), and a flag wins over the environment. `embedserve index build` and
`embedserve jobs run` read the same variables, so that what they write lands where the server looks.
In Python, `serving.settings.Settings(max_queue=64)` makes the same settings for `create_app`.

A comma-separated setting is one string (`EMBEDSERVE_API_KEYS=key1,key2`); a boolean is `true` or
`false`; *unset* means the variable is absent.

| Name | Environment variable | Type | Default | Description |
|---|---|---|---|---|
"""


def env_name(name: str, settings_cls: type[Settings] = Settings) -> str:
    """The environment variable that sets field `name`."""
    return f"{settings_cls.model_config['env_prefix']}{name}".upper()


def default_text(field: FieldInfo) -> str:
    """A field's default as it would be written in its environment variable."""
    value = field.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _type_name(annotation) -> str:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # `X | None`: unset is its default
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return " or ".join(_type_name(a) for a in inner)
    if typing.get_origin(annotation) is typing.Literal:
        return "one of " + ", ".join(f"`{value}`" for value in typing.get_args(annotation))
    names = {bool: "boolean", int: "integer", float: "number", str: "string", Path: "path", SecretStr: "secret string"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def type_text(name: str, field: FieldInfo) -> str:
    """A field's type, with its unit (from the name's suffix) and its bounds: `integer, bytes, ≥ 1`."""
    parts = [_type_name(field.annotation)]
    parts += [unit for suffix, unit in UNITS.items() if name.endswith(suffix)][:1]
    parts += [f"{sign} {getattr(bound, attr)}" for kind, attr, sign in BOUNDS for bound in field.metadata
              if isinstance(bound, kind)]
    return ", ".join(parts)


def _cell(text: str) -> str:
    """`text` for a Markdown table cell: pipes, tag openers and stars outside `code` escaped."""
    pieces = text.split("`")
    for i in range(0, len(pieces), 2):  # the even pieces are outside code spans
        for char in "\\|<*":
            pieces[i] = pieces[i].replace(char, "\\" + char)
    return "`".join(pieces).replace("\n", " ")


def render(settings_cls: type[Settings] = Settings) -> str:
    """The whole of docs/configuration.md for `settings_cls`: one table row per field, in field order."""
    rows = []
    for name, field in settings_cls.model_fields.items():
        if not field.description:
            raise ValueError(f"setting {name} has no description: give it Field(description=...) in serving/settings.py")
        default = default_text(field)
        default = f"*{default}*" if default == "unset" else f"`{default}`" if default else "*empty*"
        rows.append(f"| `{name}` | `{env_name(name, settings_cls)}` | {_cell(type_text(name, field))} | {default} "
                    f"| {_cell(field.description)} |\n")
    return INTRO + "".join(rows)


def main(argv: list[str] | None = None) -> int:
    path = Path(argv[0]) if argv else DOC_PATH
    path.write_text(render(), encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
