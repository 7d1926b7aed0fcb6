"""gensim's test data is found on disk, and a missing file is named."""

import pytest

from training.evaluation.datasets import ANALOGIES, WORD_SIMILARITY, gensim_test_file


def test_finds_the_benchmark_files_gensim_ships():
    pytest.importorskip("gensim")
    assert gensim_test_file(ANALOGIES).read_text(encoding="utf-8").startswith(": capital-common-countries")
    assert gensim_test_file(WORD_SIMILARITY).is_file()


def test_a_missing_file_is_named():
    pytest.importorskip("gensim")
    with pytest.raises(FileNotFoundError, match="no-such-file.txt"):
        gensim_test_file("no-such-file.txt")
