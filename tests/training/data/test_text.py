"""The text corpus reader: tokenizing, file formats, folders, sentence units, encoding."""

import gzip

import numpy as np
import pytest

from training.data.text import corpus_files, encode_corpus, iter_sentences, tokenize


def test_tokenize_lowercases_and_keeps_unicode_letters_together():
    assert tokenize("Café au LAIT, naïve—2 cups; don't") == ["café", "au", "lait", "naïve", "cups", "don", "t"]


def test_reads_gzip_and_dictzip_like_plain_text(tmp_path):
    text = "The cat sat.\nOn the mat.\n\nA second paragraph.\n"
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    with gzip.open(tmp_path / "b.gz", "wt", encoding="utf-8") as f:
        f.write(text)
    (tmp_path / "c.dz").write_bytes((tmp_path / "b.gz").read_bytes())  # dictzip is gzip with an index
    expected = [["the", "cat", "sat", "on", "the", "mat"], ["a", "second", "paragraph"]]
    for name in ("a.txt", "b.gz", "c.dz"):
        assert list(iter_sentences(tmp_path / name)) == expected


def test_line_mode_makes_each_line_a_sentence(tmp_path):
    (tmp_path / "a.txt").write_text("one two\nthree\n\nfour\n", encoding="utf-8")
    assert list(iter_sentences(tmp_path / "a.txt", sentence_unit="line")) == [["one", "two"], ["three"], ["four"]]


def test_folder_is_read_recursively_in_sorted_order_and_skips_other_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("beta\n", encoding="utf-8")
    (tmp_path / "sub" / "a.txt").write_text("alpha\n", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first\n", encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored\n", encoding="utf-8")
    assert [p.relative_to(tmp_path).as_posix() for p in corpus_files(tmp_path)] == ["a.txt", "b.txt", "sub/a.txt"]
    assert list(iter_sentences(tmp_path)) == [["first"], ["beta"], ["alpha"]]


def test_long_sentences_are_cut_and_max_words_stops_the_stream(tmp_path):
    (tmp_path / "a.txt").write_text(" ".join(["w"] * 25) + "\n\nlast words here\n", encoding="utf-8")
    assert [len(s) for s in iter_sentences(tmp_path / "a.txt", max_sentence_tokens=10)] == [10, 10, 5, 3]
    assert [len(s) for s in iter_sentences(tmp_path / "a.txt", max_sentence_tokens=10, max_words=12)] == [10, 2]


def test_missing_corpus_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.txt"):
        list(iter_sentences(tmp_path / "nowhere.txt"))


def test_encode_corpus_drops_unknown_words_and_keeps_sentence_offsets(tmp_path):
    (tmp_path / "a.txt").write_text("a b zzz\n\nzzz\n\nb c\n", encoding="utf-8")
    corpus = encode_corpus(tmp_path / "a.txt", {"a": 0, "b": 1, "c": 2})
    assert corpus.ids.dtype == np.int32 and corpus.ids.tolist() == [0, 1, 1, 2]
    assert corpus.sentence_starts.tolist() == [0, 2, 4]  # the all-unknown sentence is gone
    assert corpus.raw_words == 6
