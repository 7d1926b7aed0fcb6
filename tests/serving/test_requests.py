"""The JSON check every request body passes (serving.requests.check_json), long lists included."""

import pytest

from serving.requests import check_json


@pytest.mark.parametrize("bad", [
    [0.5] * 1000 + [float("nan")],  # a long vector: checked in one numpy pass
    [0.5] * 1000 + [float("inf")],
    ["word"] * 1000 + ["a \ud800"],  # a long list that is not numbers falls back to the walk
    {"items": [{"metadata": {"x": [1] * 999 + [float("nan")]}}]},
])
def test_long_lists_are_checked_as_thoroughly_as_short_ones(bad):
    with pytest.raises(ValueError):
        check_json(bad)


@pytest.mark.parametrize("good", [[0.5] * 100_000, ["nan"] * 1000, ["1e999"] * 1000, [10**30] * 1000, [True] * 1000])
def test_long_lists_of_plain_json_pass(good):
    check_json(good)  # strings that read as non-finite numbers are strings, and big integers are JSON
