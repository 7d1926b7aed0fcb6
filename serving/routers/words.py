"""Word-vector endpoints: `GET /analogy` and `GET /similar`."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from serving.dependencies import get_registry
from serving.errors import UnknownWord, error_responses
from serving.registry import Registry
from serving.requests import check_k

router = APIRouter(tags=["words"], responses=error_responses(404, 503))

Word = Annotated[str, Query(min_length=1, max_length=100)]
K = Annotated[int, Query(ge=1, description="how many results")]
ModelName = Annotated[str | None, Query(description="word-vectors model; the default when omitted")]


class WordResult(BaseModel):
    word: str
    score: float


class WordsResponse(BaseModel):
    model: str
    version: str
    results: list[WordResult]


class AnalogyResponse(WordsResponse):
    a: str
    b: str
    c: str
    method: str


def _check(registry: Registry, k: int, vectors, *words: str) -> None:
    check_k(k, registry.settings)
    unknown = vectors.unknown(*words)
    if unknown:
        raise UnknownWord(f"not in the vocabulary: {', '.join(repr(w) for w in unknown)}")


@router.get("/analogy", response_model=AnalogyResponse, summary="a − b + c: king − man + woman ≈ queen")
def analogy(
    a: Word,
    b: Word,
    c: Word,
    registry: Annotated[Registry, Depends(get_registry)],
    k: K = 10,
    method: Annotated[Literal["3cosadd", "3cosmul"], Query(description="3CosAdd or 3CosMul")] = "3cosadd",
    model: ModelName = None,
) -> AnalogyResponse:
    words = registry.word_model(model)
    _check(registry, k, words.vectors, a, b, c)
    hits = words.vectors.analogy(a, b, c, k=k, method=method)
    return AnalogyResponse(
        model=words.manifest.name,
        version=words.manifest.version,
        a=a,
        b=b,
        c=c,
        method=method,
        results=[WordResult(word=h.word, score=h.score) for h in hits],
    )


@router.get("/similar", response_model=WordsResponse, summary="The nearest words by cosine similarity")
def similar(
    word: Word,
    registry: Annotated[Registry, Depends(get_registry)],
    k: K = 10,
    model: ModelName = None,
) -> WordsResponse:
    words = registry.word_model(model)
    _check(registry, k, words.vectors, word)
    hits = words.vectors.similar(word, k=k)
    return WordsResponse(
        model=words.manifest.name, version=words.manifest.version, results=[WordResult(word=h.word, score=h.score) for h in hits]
    )
