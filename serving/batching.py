"""The dynamic micro-batcher: requests that arrive together share one model call.

One `MicroBatcher` per model. `await batcher.submit(items)` queues a request; a worker task
takes the first waiting request and everything queued behind it, up to `max_batch_size` rows
(and, for a text model, `max_batch_tokens` tokens: rows times the longest row's tokens, as the
batch is padded to it), runs them as one `encoder.encode` call in a worker thread, and hands each
caller back its own rows. At most `batches_in_flight` batches run at once, and the requests that
arrive while they run form the next: under load batches grow by themselves, and a lone request
never waits (continuous batching, as text-embeddings-inference and infinity do). With one batch in
flight, the model and the event loop take turns: the loop answers a batch's callers and reads
their next requests while the model sits idle, then the model runs while the loop has nothing to
do. With two (the server's default), one batch is in the model while the loop answers the other's
callers, and on a CPU the second batch uses the cores the first leaves: on 2 cores, with a thread
per core, concurrent clients of one text each got 1.1-1.7x the requests/s of one batch at a time
and one thread (bench/text_vs_infinity.py). `max_wait_ms` > 0 also
holds a batch open that long after its first request arrived, trading latency for fuller batches
(worth it on a GPU, where a batch of 32 costs little more than a batch of 1). With
`enabled=False` every request calls the encoder on its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from runtime.encoders.base import Encoder
from serving.errors import NotReady, Overloaded

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    """One piece of a request (rows that fit one batch) and the future its caller awaits."""

    items: np.ndarray  # (n, ...)
    future: asyncio.Future
    queued_at: float  # loop time when it was queued: a batch's wait counts from its first piece's arrival
    tokens: int = 0  # a text model: its longest row's tokens (Encoder.row_tokens); 0 for images


def _shutting_down() -> NotReady:
    return NotReady("the server is shutting down; retry the request")


class MicroBatcher:
    """Groups concurrent `submit` calls into encoder batches of at most `max_batch_size` rows (and
    `max_batch_tokens` tokens for a text model)."""

    def __init__(
        self,
        encoder: Encoder,
        max_batch_size: int = 32,  # most rows in one encode call
        max_wait_ms: float = 0.0,  # extra time a batch stays open after its first request arrived
        enabled: bool = True,  # False: each request calls encode directly (still in a thread)
        on_batch: Callable[[int], None] | None = None,  # told each batch's row count (metrics)
        max_queue_rows: int | None = None,  # rows queued or in a batch before a new request answers Overloaded
        max_batch_tokens: int | None = None,  # a text model: most rows x longest row's tokens in one call (None: rows only)
        batches_in_flight: int = 1,  # encode calls running at once; the next batch forms while they run
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, not {max_batch_size}")
        if batches_in_flight < 1:
            raise ValueError(f"batches_in_flight must be at least 1, not {batches_in_flight}")
        self.encoder = encoder
        self.max_batch_size = max_batch_size
        self.max_wait_ms = max_wait_ms
        self.enabled = enabled
        self.on_batch = on_batch
        self.max_queue_rows = max_queue_rows
        self.max_batch_tokens = max_batch_tokens
        self.batches_in_flight = batches_in_flight
        self._waiting_rows = 0  # rows of pieces queued or in a batch, not yet answered
        self._queue: asyncio.Queue[_Pending] | None = None
        self._worker: asyncio.Task | None = None
        self._computing: set[asyncio.Task] = set()  # the batches being encoded
        self._carry: _Pending | None = None  # a piece that did not fit the last batch; it opens the next
        self._queued_rows = 0  # rows in the queue (not counting the carry)
        # While the worker waits for a batch to fill: the rows it still wants, and the future that
        # `submit` completes once that many are queued (or a timer does at the deadline).
        self._wanted_rows = 0
        self._waiter: asyncio.Future | None = None

    @property
    def waiting_rows(self) -> int:
        """Rows queued or in a batch being computed: a large request's pieces count as they are
        queued, one at a time, not all at once."""
        return self._waiting_rows

    async def start(self) -> None:
        """Start the worker task on the running event loop (idempotent)."""
        if self.enabled and self._worker is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._run(), name=f"batcher-{self.encoder.name}")

    async def stop(self) -> None:
        """Stop the worker; requests still waiting get NotReady rather than hanging."""
        worker, self._worker = self._worker, None
        for task in ([worker] if worker is not None else []) + list(self._computing):
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        waiting = [self._carry] if self._carry else []
        self._carry = None
        while self._queue is not None and not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        self._queued_rows = 0
        for pending in waiting:
            if not pending.future.done():
                pending.future.set_exception(_shutting_down())

    async def submit(self, items: np.ndarray) -> np.ndarray:
        """Embed `items` (n, ...) → (n, D), in order, sharing model calls with concurrent requests."""
        if len(items) == 0:
            raise ValueError("submit needs at least one item")
        limit = self.max_queue_rows
        first_piece = min(len(items), self.max_batch_size)  # what it queues at once: a large request queues a piece at a time
        if limit is not None and self._waiting_rows and self._waiting_rows + first_piece > limit:
            # a queue full of other requests' rows answers now rather than holding memory and time for an
            # answer that comes too late; a request that got in keeps its turn for each of its pieces
            raise Overloaded(f"model {self.encoder.name} has {self._waiting_rows} rows waiting (the limit is {limit}); "
                             "retry after a moment")
        return await self._submit(items)

    async def _submit(self, items: np.ndarray) -> np.ndarray:
        if not self.enabled:
            return await self._encode_unbatched(items)
        if self._worker is None:  # not started by a lifespan (e.g. a script): start on this loop
            await self.start()
        # A request larger than a batch is split, and its pieces are queued one at a time, each once
        # the one before it is answered: whatever other requests queued meanwhile goes first, so a
        # large request (a thousand-prompt class matrix, 256 texts) shares the model with them
        # rather than holding it for all its batches, and its rows count against max_queue_rows a
        # piece at a time, so it never fills the queue that others are admitted by. A lone large request loses a hop of the event
        # loop between its batches, and the overlap of its batches when more than one may run.
        parts = [await self._submit_piece(items[start:end], tokens) for start, end, tokens in self._pieces(items)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)  # (n, D)

    def _pieces(self, items: np.ndarray) -> list[tuple[int, int, int]]:
        """(start, end, longest row's tokens) of each piece of a request: runs of rows that fit one
        batch, at most max_batch_size rows and, for a text model, max_batch_tokens tokens (a row
        longer than that alone is a piece of its own)."""
        tokens = self.encoder.row_tokens(items) if self.max_batch_tokens else None
        if tokens is None:
            return [(start, min(start + self.max_batch_size, len(items)), 0)
                    for start in range(0, len(items), self.max_batch_size)]
        pieces, start, longest = [], 0, 0
        for i, t in enumerate(tokens.tolist()):
            grown = max(longest, t)
            if i > start and (i - start == self.max_batch_size or (i - start + 1) * grown > self.max_batch_tokens):
                pieces.append((start, i, longest))
                start, grown = i, t
            longest = grown
        return pieces + [(start, len(items), longest)]

    async def _submit_piece(self, rows: np.ndarray, tokens: int = 0) -> np.ndarray:
        """Queue one piece (rows that fit one batch) and await its embeddings."""
        loop = asyncio.get_running_loop()
        piece = _Pending(rows, loop.create_future(), loop.time(), tokens)
        self._queue.put_nowait(piece)
        self._queued_rows += len(rows)
        self._waiting_rows += len(rows)
        waiter = self._waiter
        if waiter is not None and not waiter.done() and self._queued_rows >= self._wanted_rows:
            waiter.set_result(None)  # the batch being collected can now be filled: wake the worker
        try:
            return await piece.future
        except BaseException:
            piece.future.cancel()  # the caller is gone (or failed): the worker skips a cancelled piece
            raise
        finally:
            self._waiting_rows -= len(rows)

    async def _encode_unbatched(self, items: np.ndarray) -> np.ndarray:
        parts = []
        for start, end, _ in self._pieces(items):
            self._observe(end - start)
            self._waiting_rows += end - start
            try:
                parts.append(self._checked(await asyncio.to_thread(self.encoder.encode, items[start:end]), end - start))
            finally:
                self._waiting_rows -= end - start
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    async def _run(self) -> None:
        slots = asyncio.Semaphore(self.batches_in_flight)
        while True:
            await slots.acquire()  # a batch forms once one may run: until then, requests queue for it
            batch = await self._collect()
            batch = [p for p in batch if not p.future.done()]  # callers that went away
            if not batch:
                slots.release()
                continue
            task = asyncio.create_task(self._compute(batch))
            self._computing.add(task)
            task.add_done_callback(lambda t: (self._computing.discard(t), slots.release()))

    async def _compute(self, batch: list[_Pending]) -> None:
        """Encode one batch in a worker thread and hand each caller its rows (or the error)."""
        rows = np.concatenate([p.items for p in batch]) if len(batch) > 1 else batch[0].items  # (B, ...)
        self._observe(len(rows))
        try:
            embeddings = self._checked(await asyncio.to_thread(self.encoder.encode, rows), len(rows))  # (B, D)
        except asyncio.CancelledError:
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(_shutting_down())
            raise
        except Exception as e:  # every caller of this batch hears of it; the worker keeps going
            log.exception("model %s: encode of a batch of %d failed", self.encoder.name, len(rows))
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(e)
            return
        start = 0
        for p in batch:
            end = start + len(p.items)
            if not p.future.done():
                p.future.set_result(embeddings[start:end])
            start = end

    async def _collect(self) -> list[_Pending]:
        """The next batch: the first waiting piece, whatever is queued behind it that fits, and
        whatever arrives that fits until max_wait_ms after the first piece's arrival. A piece that
        already waited that long (queued while the last batch ran) has used up its wait: the batch
        takes what is queued and goes."""
        first, self._carry = self._carry, None
        if first is None:
            first = await self._queue.get()
            self._queued_rows -= len(first.items)
        batch, rows, longest = [first], len(first.items), first.tokens
        loop = asyncio.get_running_loop()
        deadline = first.queued_at + self.max_wait_ms / 1000.0
        while rows < self.max_batch_size:
            if self._queue.empty():
                remaining_s = deadline - loop.time()
                if remaining_s <= 0:
                    break
                await self._wait_for_rows(self.max_batch_size - rows, remaining_s)
                if self._queue.empty():
                    break  # the deadline passed with nothing new
                continue
            piece = self._queue.get_nowait()
            self._queued_rows -= len(piece.items)
            if not self._fits(rows + len(piece.items), max(longest, piece.tokens)):
                self._carry = piece  # would overflow this batch: it opens the next one
                break
            batch.append(piece)
            rows, longest = rows + len(piece.items), max(longest, piece.tokens)
        return batch

    def _fits(self, rows: int, longest_tokens: int) -> bool:
        """Whether a batch of `rows` rows padded to `longest_tokens` tokens is within the limits."""
        return rows <= self.max_batch_size and (
            not self.max_batch_tokens or not longest_tokens or rows * longest_tokens <= self.max_batch_tokens)

    async def _wait_for_rows(self, rows: int, timeout_s: float) -> None:
        """Sleep until `rows` rows are queued or `timeout_s` passes. One future and one timer per
        wait, and `submit` wakes the worker only when the batch can be filled, rather than once
        per arriving request: this is per-request work on the event loop, which is the bottleneck."""
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._waiter, self._wanted_rows = waiter, rows
        timer = loop.call_later(timeout_s, lambda: waiter.done() or waiter.set_result(None))
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _checked(self, embeddings: np.ndarray, rows: int) -> np.ndarray:
        if embeddings.ndim != 2 or len(embeddings) != rows:
            raise RuntimeError(f"model {self.encoder.name} returned {embeddings.shape} for {rows} inputs; expected ({rows}, D)")
        return embeddings

    def _observe(self, rows: int) -> None:
        if self.on_batch is not None:
            self.on_batch(rows)
