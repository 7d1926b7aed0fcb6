"""The project's Dockerfiles read as a builder reads them, for tests that run without a Docker
engine: instructions per build stage, and what their RUN lines pip-install."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVER_DOCKERFILE = ROOT / "Dockerfile"  # the server (default target) and `train` images
RAY_DOCKERFILE = ROOT / "deploy" / "Dockerfile"  # gateway, Ray head and workers
TRITON_DOCKERFILE = ROOT / "deploy" / "triton.Dockerfile"  # Triton with what the preprocessing models import


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, USER, ...
    arguments: str  # the rest of the logical line, continuations joined


@dataclass
class Stage:
    name: str  # the AS name, or the FROM image for a stage without one
    base: str  # what FROM names: an image, or an earlier stage
    instructions: list[Instruction] = field(default_factory=list)

    def last(self, keyword: str) -> str | None:
        """The arguments of this stage's last `keyword` instruction, None when it has none."""
        found = [i.arguments for i in self.instructions if i.keyword == keyword]
        return found[-1] if found else None


def instructions(path: Path) -> list[Instruction]:
    """Every instruction of a Dockerfile: comments dropped, backslash continuations joined."""
    logical, current = [], ""
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    if current:
        logical.append(current)
    return [Instruction(keyword.upper(), rest.strip()) for keyword, _, rest in (line.partition(" ") for line in logical)]


def stages(path: Path) -> dict[str, Stage]:
    """A Dockerfile's build stages by name, in order; a stage built FROM an earlier one starts with
    that stage's instructions, as it inherits its files and its USER."""
    found: dict[str, Stage] = {}
    stage = None
    for instruction in instructions(path):
        if instruction.keyword == "FROM":
            words = instruction.arguments.split()
            base = words[0]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else base
            inherited = list(found[base].instructions) if base in found else []
            stage = found[name] = Stage(name, base, inherited)
        elif stage is not None:
            stage.instructions.append(instruction)
    return found


def pip_requirements(run: str) -> list[str]:
    """The requirement arguments of every `pip install` / `pip3 install` in one RUN line."""
    requirements = []
    for command in re.split(r"&&|;|\|\|", run):
        words = shlex.split(command)
        for i in range(len(words) - 1):
            if words[i] in ("pip", "pip3") and words[i + 1] == "install":  # also as `python3 -m pip install`
                requirements += [w for w in words[i + 2:] if not w.startswith("-")]
    return requirements


def installed_requirements(path: Path) -> list[str]:
    """Everything a Dockerfile's RUN lines pip-install, in order."""
    return [r for i in instructions(path) if i.keyword == "RUN" for r in pip_requirements(i.arguments)]
