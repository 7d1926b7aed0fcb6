"""docs/configuration.md is what serving.settings_doc writes from Settings, so it cannot drift."""

from __future__ import annotations

import pytest
from pydantic import Field

from serving.settings import Settings
from serving.settings_doc import DOC_PATH, REGENERATE, render


def test_the_committed_configuration_reference_is_what_the_generator_writes():
    assert DOC_PATH.read_text(encoding="utf-8") == render(), (
        f"docs/configuration.md differs from the settings in serving/settings.py: run `{REGENERATE}` and commit it")


def test_a_new_setting_gets_its_row_and_one_without_a_description_is_refused():
    class More(Settings):
        max_widgets: int = Field(3, ge=1, description="most widgets | one request may send")

    row = next(line for line in render(More).splitlines() if "max_widgets" in line)
    assert row == "| `max_widgets` | `EMBEDSERVE_MAX_WIDGETS` | integer, ≥ 1 | `3` | most widgets \\| one request may send |"

    class Undescribed(Settings):
        max_gadgets: int = 3

    with pytest.raises(ValueError, match="max_gadgets has no description"):
        render(Undescribed)


def test_each_row_gives_the_type_unit_bounds_and_default_as_the_environment_spells_them():
    rows = {line.split(" | ")[0].strip("| `"): line for line in render().splitlines() if line.startswith("| `")}
    assert set(rows) == set(Settings.model_fields)
    assert "| number, seconds, > 0 | `60.0` |" in rows["request_timeout_s"]
    assert "| boolean | `true` |" in rows["batching"]
    assert "| one of `faiss`, `milvus` | `faiss` |" in rows["index_backend"]
    assert "| secret string | *unset* |" in rows["milvus_token"]
    assert "| string | *empty* |" in rows["api_keys"]
    assert "index:\\<name>" in rows["data_roots"]  # not an HTML tag that a forge would swallow
