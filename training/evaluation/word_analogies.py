"""The Google word-analogy test (a : b :: c : ?), scored exactly as gensim's
`KeyedVectors.evaluate_word_analogies` scores it, but with the questions batched through one
matrix product instead of one vocabulary scan per question.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

# Questions scored per matrix product: (restrict_vocab x batch) float32 scores, ~60 MB at 300k words.
QUESTIONS_PER_BATCH = 50
# gensim keeps the top 5 answers left after dropping the question words, then takes the first
# one whose spelling (upper-cased) is not a question word either.
TOP_ANSWERS = 5


def evaluate_word_analogies(
    vectors: np.ndarray,
    vocab: Sequence[str],
    questions_path: str | Path,
    restrict_vocab: int = 300_000,
    case_insensitive: bool = True,
    max_questions: int | None = None,
) -> dict:
    """3CosAdd accuracy per section and overall, on the `restrict_vocab` most frequent words.

    vectors (V, D) with row i for vocab[i], most frequent first. A question counts only when
    its four words are among those words (else it is skipped); its answer is the word whose
    unit vector is closest to unit(b) - unit(a) + unit(c), the three question words excluded.
    Sections named "gram*" are syntactic, the others semantic. `max_questions` bounds the cost:
    at most that many of the covered questions, evenly spaced through the file so that every
    section keeps its share (None = all of them).
    """
    vectors = np.asarray(vectors, dtype=np.float32)[:restrict_vocab]  # (R, D)
    keys = [w.upper() if case_insensitive else w for w in vocab[: len(vectors)]]
    key_to_index: dict[str, int] = {}
    for i, key in enumerate(keys):
        key_to_index.setdefault(key, i)  # case variants share the most frequent one's vector

    sections, questions, skipped = _read_questions(Path(questions_path), key_to_index, case_insensitive)
    if max_questions is not None and len(questions) > max_questions:
        questions = [questions[i] for i in np.linspace(0, len(questions) - 1, max_questions).round().astype(int)]
    answers = _answer(vectors, keys, questions)  # (Q,) predicted key per covered question

    correct = np.zeros(len(sections), dtype=np.int64)
    incorrect = np.zeros(len(sections), dtype=np.int64)
    for (section, *_words, expected), predicted in zip(questions, answers):
        if predicted == expected:
            correct[section] += 1
        else:
            incorrect[section] += 1

    def summary(which: np.ndarray) -> dict:
        c, n = int(correct[which].sum()), int(correct[which].sum() + incorrect[which].sum())
        return {"correct": c, "incorrect": n - c, "accuracy": c / n if n else 0.0}

    syntactic = np.array([name.startswith("gram") for name in sections], dtype=bool)
    return {
        "sections": [
            {"section": name, **summary(np.arange(len(sections)) == i)} for i, name in enumerate(sections)
        ],
        "semantic": summary(~syntactic)["accuracy"],
        "syntactic": summary(syntactic)["accuracy"],
        "total": summary(np.ones(len(sections), dtype=bool)),
        "covered": len(questions),
        "skipped": skipped,
    }


def _read_questions(
    path: Path, key_to_index: dict[str, int], case_insensitive: bool
) -> tuple[list[str], list[tuple[int, str, str, str, str]], int]:
    """Section names, covered questions as (section, a, b, c, expected) keys, and the skipped count."""
    if not path.is_file():
        raise FileNotFoundError(f"no analogy questions at {path}")
    sections: list[str] = []
    questions: list[tuple[int, str, str, str, str]] = []
    skipped = 0
    with open(path, encoding="utf-8") as lines:
        for line_no, line in enumerate(lines, start=1):
            if line.startswith(": "):
                sections.append(line.lstrip(": ").strip())
                continue
            words = [w.upper() if case_insensitive else w for w in line.split()]
            if len(words) != 4:
                continue  # gensim skips malformed lines too
            if not sections:
                raise ValueError(f"{path}:{line_no}: a question comes before the first ': section' line")
            if all(w in key_to_index for w in words):
                questions.append((len(sections) - 1, *words))
            else:
                skipped += 1
    return sections, questions, skipped


def _answer(vectors: np.ndarray, keys: list[str], questions: list[tuple[int, str, str, str, str]]) -> list[str]:
    """gensim's answer to each question: the best of `most_similar(positive=[b, c], negative=[a])`."""
    if not questions:
        return []
    key_to_index: dict[str, int] = {}
    for i, key in enumerate(keys):
        key_to_index.setdefault(key, i)
    norms = np.linalg.norm(vectors, axis=1)  # (R,)
    unit = vectors / norms[:, None]  # (R, D)
    abc = np.array([[key_to_index[w] for w in q[1:4]] for q in questions])  # (Q, 3)
    answers: list[str] = []
    for start in range(0, len(abc), QUESTIONS_PER_BATCH):
        a, b, c = abc[start : start + QUESTIONS_PER_BATCH].T  # (q,) each
        target = (unit[b] + unit[c] - unit[a]) / 3  # (q, D) gensim's weighted mean
        target /= np.linalg.norm(target, axis=1, keepdims=True)
        scores = (vectors @ target.T / norms[:, None]).T  # (q, R) cosine, computed as gensim does
        rows = np.arange(len(a))
        for excluded in (a, b, c):
            scores[rows, excluded] = -np.inf
        top = np.argpartition(-scores, TOP_ANSWERS - 1, axis=1)[:, :TOP_ANSWERS]  # (q, 5) unordered
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        top = np.take_along_axis(top, order, axis=1)  # (q, 5) best first
        for (_, qa, qb, qc, _), candidates in zip(questions[start : start + QUESTIONS_PER_BATCH], top):
            predicted = None
            for index in candidates:
                predicted = keys[index]
                if predicted not in (qa, qb, qc):
                    break
            answers.append(predicted)
    return answers
