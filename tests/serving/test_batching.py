import asyncio
import threading

import numpy as np
import pytest

from runtime.bundle import Manifest
from serving.batching import MicroBatcher
from runtime.encoders.base import Encoder


class TimesTen(Encoder):
    """Embeds a row [x] as [10x, -x] and records the size of every call."""

    def __init__(self, fail_on: float | None = None):
        self.manifest = Manifest(name="ten", kind="image-encoder", method="simclr", dim=2, normalized=False, files={})
        self.calls: list[int] = []
        self.threads: set[str] = set()
        self.fail_on = fail_on

    def encode(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(len(batch))
        self.threads.add(threading.current_thread().name)
        if self.fail_on is not None and (batch == self.fail_on).any():
            raise RuntimeError("poisoned batch")
        return np.concatenate([batch * 10, -batch], axis=1).astype(np.float32)  # (B, 2)


class Held(TimesTen):
    """TimesTen whose encode says it has begun (`inside`, released once per call) and then waits
    until the test sets `release`."""

    def __init__(self):
        super().__init__()
        self.inside = threading.Semaphore(0)
        self.release = threading.Event()

    def encode(self, batch: np.ndarray) -> np.ndarray:
        self.inside.release()
        self.release.wait(5)
        return super().encode(batch)

    async def wait_inside(self) -> bool:
        """Until a call is inside encode (False after 5 s)."""
        return await asyncio.to_thread(self.inside.acquire, True, 5)


def rows(caller: int, n: int) -> np.ndarray:
    return np.full((n, 1), caller, dtype=np.float32)  # every row of a caller carries its number


async def run_batcher(batcher: MicroBatcher, requests: list[np.ndarray]) -> list:
    await batcher.start()
    try:
        return await asyncio.gather(*(batcher.submit(r) for r in requests), return_exceptions=True)
    finally:
        await batcher.stop()


def test_concurrent_requests_share_calls_and_each_caller_gets_its_own_rows():
    encoder = TimesTen()
    sizes: list[int] = []
    batcher = MicroBatcher(encoder, max_batch_size=64, max_wait_ms=20, on_batch=sizes.append)
    requests = [rows(caller, 1 + caller % 3) for caller in range(20)]
    results = asyncio.run(run_batcher(batcher, requests))
    assert len(encoder.calls) < len(requests)
    assert sum(encoder.calls) == sum(len(r) for r in requests) and sizes == encoder.calls
    for caller, (request, result) in enumerate(zip(requests, results)):
        assert result.shape == (len(request), 2)
        np.testing.assert_array_equal(result[:, 0], 10 * caller)
        np.testing.assert_array_equal(result[:, 1], -caller)
    assert threading.main_thread().name not in encoder.threads  # encode ran off the event loop


def test_an_encode_error_reaches_every_caller_of_that_batch_and_the_batcher_goes_on():
    encoder = TimesTen(fail_on=7)
    batcher = MicroBatcher(encoder, max_batch_size=64, max_wait_ms=20)

    async def scenario():
        await batcher.start()
        try:
            first = await asyncio.gather(*(batcher.submit(rows(c, 1)) for c in (5, 6, 7)), return_exceptions=True)
            after = await batcher.submit(rows(8, 2))
            return first, after
        finally:
            await batcher.stop()

    first, after = asyncio.run(scenario())
    assert encoder.calls[0] == 3  # the three requests were one batch...
    assert all(isinstance(r, RuntimeError) and "poisoned" in str(r) for r in first)  # ...so all three fail
    np.testing.assert_array_equal(after, [[80, -8], [80, -8]])


def test_batching_off_calls_the_encoder_once_per_request_off_the_loop():
    encoder = TimesTen()
    batcher = MicroBatcher(encoder, max_batch_size=64, max_wait_ms=200, enabled=False)
    results = asyncio.run(run_batcher(batcher, [rows(c, 2) for c in range(5)]))
    assert encoder.calls == [2] * 5
    assert [r[0, 0] for r in results] == [0, 10, 20, 30, 40]
    assert threading.main_thread().name not in encoder.threads


@pytest.mark.parametrize("enabled", [True, False])
def test_a_request_larger_than_max_batch_size_is_split_and_reassembled_in_order(enabled: bool):
    encoder = TimesTen()
    batcher = MicroBatcher(encoder, max_batch_size=4, max_wait_ms=1, enabled=enabled)
    items = np.arange(10, dtype=np.float32)[:, None]  # (10, 1)
    (result,) = asyncio.run(run_batcher(batcher, [items]))
    assert max(encoder.calls) <= 4 and sum(encoder.calls) == 10
    np.testing.assert_array_equal(result[:, 0], np.arange(10) * 10)


def test_requests_that_would_overflow_a_batch_wait_for_the_next_one():
    encoder = TimesTen()
    batcher = MicroBatcher(encoder, max_batch_size=5, max_wait_ms=20)
    results = asyncio.run(run_batcher(batcher, [rows(c, 3) for c in range(4)]))
    assert max(encoder.calls) <= 5 and sum(encoder.calls) == 12
    assert [r[0, 0] for r in results] == [0, 10, 20, 30]


def test_wrong_row_count_from_the_encoder_is_an_error_not_a_misrouted_result():
    encoder = TimesTen()
    encoder.encode = lambda batch: np.zeros((len(batch) + 1, 2), np.float32)
    batcher = MicroBatcher(encoder, max_batch_size=8, max_wait_ms=1)
    (result,) = asyncio.run(run_batcher(batcher, [rows(1, 2)]))
    assert isinstance(result, RuntimeError) and "returned" in str(result)


def test_stop_answers_waiting_callers_with_not_ready_instead_of_hanging():
    from serving.errors import NotReady

    entered, release = threading.Event(), threading.Event()
    encoder = TimesTen()
    encoder.encode = lambda batch: (entered.set(), release.wait(5), np.zeros((len(batch), 2), np.float32))[2]
    batcher = MicroBatcher(encoder, max_batch_size=1, max_wait_ms=0)

    async def scenario():
        await batcher.start()
        callers = [asyncio.ensure_future(batcher.submit(rows(c, 1))) for c in range(3)]
        try:
            assert await asyncio.to_thread(entered.wait, 5)  # the first is inside encode, the others queued
            await batcher.stop()
            # a caller left hanging would fail here, not hang the suite
            return await asyncio.wait_for(asyncio.gather(*callers, return_exceptions=True), 5)
        finally:
            release.set()

    assert all(isinstance(r, NotReady) for r in asyncio.run(scenario()))


def test_a_batch_that_fills_up_goes_at_once_without_waiting_out_max_wait_ms():
    encoder = TimesTen()
    # a full batch that still waited out this minute would fail the wait_for, not just stall the test
    batcher = MicroBatcher(encoder, max_batch_size=4, max_wait_ms=60_000)
    results = asyncio.run(asyncio.wait_for(run_batcher(batcher, [rows(c, 1) for c in range(4)]), 5))
    assert encoder.calls == [4]
    assert [r[0, 0] for r in results] == [0, 10, 20, 30]


def test_with_no_wait_requests_that_arrive_while_a_batch_runs_form_the_next_batch():
    # max_wait_ms=0 (the default): the first request runs alone at once; the ones that queue
    # while the model is busy go together as soon as it is free.
    entered, release = threading.Event(), threading.Event()
    encoder = TimesTen()
    plain_encode = encoder.encode
    started: list[int] = []  # the size of each batch as it enters encode

    def held_encode(batch: np.ndarray) -> np.ndarray:
        started.append(len(batch))
        entered.set()  # a batch is inside encode...
        assert release.wait(5), "the test never released the batch"  # ...and stays there until released
        return plain_encode(batch)

    encoder.encode = held_encode
    batcher = MicroBatcher(encoder, max_batch_size=64)

    async def scenario():
        await batcher.start()
        try:
            first = asyncio.ensure_future(batcher.submit(rows(0, 1)))
            assert await asyncio.to_thread(entered.wait, 5), "the first request never reached encode"
            later = [asyncio.ensure_future(batcher.submit(rows(c, 1))) for c in range(1, 6)]
            await asyncio.sleep(0.01)  # the five queue behind the batch in flight
            assert started == [1] and not first.done()  # one batch at a time: the five wait for it
            release.set()
            return await asyncio.gather(first, *later)
        finally:
            release.set()  # never leave the worker thread blocked if an assertion failed
            await batcher.stop()

    results = asyncio.run(scenario())
    assert encoder.calls == [1, 5]
    assert [r[0, 0] for r in results] == [0, 10, 20, 30, 40, 50]


def test_with_two_batches_in_flight_a_second_runs_beside_the_first_and_a_third_waits_for_either():
    # batches_in_flight=2 (the server's default): while one batch is in the model, the requests
    # queued behind it go as a second batch at once; what queues while both run waits for a slot.
    release = threading.Event()
    both_in = threading.Barrier(3)  # the two batches and the test meet inside encode
    encoder = TimesTen()
    plain_encode = encoder.encode
    started: list[int] = []

    def held_encode(batch: np.ndarray) -> np.ndarray:
        started.append(len(batch))
        if len(started) <= 2:
            both_in.wait(5)  # raises BrokenBarrierError if the second batch never started beside the first
        assert release.wait(5), "the test never released the batches"
        return plain_encode(batch)

    encoder.encode = held_encode
    batcher = MicroBatcher(encoder, max_batch_size=64, batches_in_flight=2)

    async def scenario():
        await batcher.start()
        try:
            first = asyncio.ensure_future(batcher.submit(rows(0, 1)))
            await asyncio.sleep(0.01)
            second = [asyncio.ensure_future(batcher.submit(rows(c, 1))) for c in (1, 2)]
            await asyncio.to_thread(both_in.wait, 5)  # two batches inside encode at once
            third = [asyncio.ensure_future(batcher.submit(rows(c, 1))) for c in (3, 4, 5)]
            await asyncio.sleep(0.01)
            assert started == [1, 2] and not any(t.done() for t in [first, *second, *third])  # the third waits
            release.set()
            return await asyncio.gather(first, *second, *third)
        finally:
            release.set()
            both_in.abort()
            await batcher.stop()

    results = asyncio.run(scenario())
    assert started == [1, 2, 3]
    assert [r[0, 0] for r in results] == [0, 10, 20, 30, 40, 50]


def test_stopping_with_two_batches_in_flight_answers_every_caller_not_ready():
    from serving.errors import NotReady

    encoder = Held()
    batcher = MicroBatcher(encoder, max_batch_size=1, batches_in_flight=2)

    async def scenario():
        await batcher.start()
        callers = [asyncio.ensure_future(batcher.submit(rows(c, 1))) for c in range(3)]
        try:
            for _ in range(2):  # two batches of one inside encode, the third queued
                assert await encoder.wait_inside()
            await batcher.stop()
            return await asyncio.wait_for(asyncio.gather(*callers, return_exceptions=True), 5)
        finally:
            encoder.release.set()

    assert all(isinstance(r, NotReady) for r in asyncio.run(scenario()))


def test_batches_in_flight_must_be_at_least_one():
    with pytest.raises(ValueError, match="batches_in_flight must be at least 1"):
        MicroBatcher(TimesTen(), batches_in_flight=0)


def test_a_full_queue_answers_overloaded_at_once_and_frees_as_batches_finish():
    from serving.errors import Overloaded

    encoder = Held()
    batcher = MicroBatcher(encoder, max_batch_size=64, max_queue_rows=4)

    async def scenario():
        await batcher.start()
        try:
            first = asyncio.create_task(batcher.submit(rows(1, 2)))
            assert await encoder.wait_inside()  # two rows in the model
            second = asyncio.create_task(batcher.submit(rows(2, 2)))  # four rows waiting: the limit
            await asyncio.sleep(0)
            with pytest.raises(Overloaded, match="4 rows waiting"):
                await batcher.submit(rows(3, 1))
            encoder.release.set()
            await asyncio.gather(first, second)
            return await batcher.submit(rows(4, 3))  # room again
        finally:
            encoder.release.set()
            await batcher.stop()

    np.testing.assert_array_equal(asyncio.run(scenario())[:, 0], [40, 40, 40])


def test_a_large_request_queues_a_piece_at_a_time_and_others_are_served_between_its_pieces():
    from serving.errors import Overloaded

    encoder = Held()
    batcher = MicroBatcher(encoder, max_batch_size=8, max_queue_rows=16)

    async def scenario():
        await batcher.start()
        try:
            large = asyncio.create_task(batcher.submit(rows(1, 64)))  # 8 pieces, four times the queue's limit
            assert await encoder.wait_inside()  # its first piece in the model
            assert batcher.waiting_rows == 8  # only that piece counts
            small = asyncio.create_task(batcher.submit(rows(2, 4)))  # admitted: 8 + 4 rows of 16
            await asyncio.sleep(0)
            with pytest.raises(Overloaded):  # 12 rows wait: a full piece of a third request would pass 16
                await batcher.submit(rows(3, 8))
            encoder.release.set()
            answered = await small
            return answered, await large
        finally:
            encoder.release.set()
            await batcher.stop()

    small, large = asyncio.run(scenario())
    np.testing.assert_array_equal(small[:, 0], [20] * 4)
    np.testing.assert_array_equal(large[:, 0], [10] * 64)
    assert encoder.calls == [8, 4] + [8] * 7  # the small request ran right after the piece it arrived during


def test_overloaded_is_a_429_with_retry_after():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from serving.errors import Overloaded, install_error_handlers

    app = FastAPI()
    install_error_handlers(app)

    @app.get("/busy")
    def busy():
        raise Overloaded("full")

    response = TestClient(app).get("/busy")
    assert response.status_code == 429 and response.headers["retry-after"] == "1"
    assert response.json() == {"detail": "full", "error": "overloaded"}


class Texts(Encoder):
    """A text model's stand-in: rows (B, 2, T) of ids and mask; embeds a row as [its tokens, 0] and
    records each call's (rows, padded tokens)."""

    def __init__(self):
        self.manifest = Manifest(name="texts", kind="text-encoder", method="sentence-transformers", dim=2, normalized=False,
                                 files={})
        self.calls: list[tuple[int, int]] = []

    def row_tokens(self, batch: np.ndarray) -> np.ndarray:
        return batch[:, 1].sum(axis=1)

    def encode(self, batch: np.ndarray) -> np.ndarray:
        tokens = self.row_tokens(batch)
        self.calls.append((len(batch), int(tokens.max())))
        return np.stack([tokens, np.zeros_like(tokens)], axis=1).astype(np.float32)


def texts(*lengths: int, context: int = 128) -> np.ndarray:
    batch = np.zeros((len(lengths), 2, context), np.int64)
    for i, n in enumerate(lengths):
        batch[i, :, :n] = 1
    return batch


def test_a_text_model_s_batches_keep_within_the_token_budget():
    encoder = Texts()
    batcher = MicroBatcher(encoder, max_batch_size=32, max_batch_tokens=512)
    long = texts(*[128] * 32)  # 4,096 tokens in one request: eight batches of four
    (result,) = asyncio.run(run_batcher(batcher, [long]))
    np.testing.assert_array_equal(result[:, 0], 128)
    assert encoder.calls == [(4, 128)] * 8
    encoder.calls.clear()
    (result,) = asyncio.run(run_batcher(batcher, [texts(10, 10, 300, 10, 600, 5, context=1024)]))  # padded: rows x longest
    np.testing.assert_array_equal(result[:, 0], [10, 10, 300, 10, 600, 5])
    assert encoder.calls == [(2, 10), (1, 300), (1, 10), (1, 600), (1, 5)]  # a text over the budget runs alone
    encoder.calls.clear()
    asyncio.run(run_batcher(batcher, [texts(*[10] * 40)]))  # short texts: max_batch_size is the limit
    assert encoder.calls == [(32, 10), (8, 10)]


def test_concurrent_texts_share_a_batch_only_within_the_token_budget():
    encoder = Texts()
    batcher = MicroBatcher(encoder, max_batch_size=32, max_wait_ms=50, max_batch_tokens=512)
    requests = [texts(100), texts(100), texts(100), texts(100), texts(100), texts(20)]
    results = asyncio.run(run_batcher(batcher, requests))
    assert [int(r[0, 0]) for r in results] == [100, 100, 100, 100, 100, 20]
    assert all(rows * longest <= 512 for rows, longest in encoder.calls) and sum(r for r, _ in encoder.calls) == 6
    assert encoder.calls[0] == (5, 100)  # as many as fit: the sixth would make 6 x 100
    without = Texts()
    asyncio.run(run_batcher(MicroBatcher(without, max_batch_size=32, max_wait_ms=50), requests))
    assert without.calls == [(6, 100)]  # no budget: rows only


def test_the_token_budget_defaults_to_small_batches_on_a_cpu_and_none_elsewhere():
    from serving.settings import CPU_BATCH_TOKENS, Settings

    assert Settings().batch_tokens(["CPUExecutionProvider"]) == CPU_BATCH_TOKENS
    assert Settings().batch_tokens(["CUDAExecutionProvider", "CPUExecutionProvider"]) is None
    assert Settings().batch_tokens(None) is None  # a model served elsewhere (Triton)
    assert Settings(max_batch_tokens=2048).batch_tokens(["CPUExecutionProvider"]) == 2048
