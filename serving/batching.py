"""The dynamic micro-batcher: requests that arrive together share one model call.

One `MicroBatcher` per model. `await batcher.submit(items)` queues a request; a worker task
takes the first waiting request, waits up to `max_wait_ms` for more, concatenates at most
`max_batch_size` rows into one `encoder.encode` call in a worker thread, and hands each
caller back its own rows. With `enabled=False` every request calls the encoder on its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from serving.encoders.base import Encoder
from serving.errors import NotReady

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    """One piece of a request (at most max_batch_size rows) and the future its caller awaits."""

    items: np.ndarray  # (n, ...)
    future: asyncio.Future


def _shutting_down() -> NotReady:
    return NotReady("the server is shutting down; retry the request")


class MicroBatcher:
    """Groups concurrent `submit` calls into encoder batches of at most `max_batch_size` rows."""

    def __init__(
        self,
        encoder: Encoder,
        max_batch_size: int = 32,  # most rows in one encode call
        max_wait_ms: float = 5.0,  # longest the first request of a batch waits for others
        enabled: bool = True,  # False: each request calls encode directly (still in a thread)
        on_batch: Callable[[int], None] | None = None,  # told each batch's row count (metrics)
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, not {max_batch_size}")
        self.encoder = encoder
        self.max_batch_size = max_batch_size
        self.max_wait_ms = max_wait_ms
        self.enabled = enabled
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Pending] | None = None
        self._worker: asyncio.Task | None = None
        self._carry: _Pending | None = None  # a piece that did not fit the last batch; it opens the next

    async def start(self) -> None:
        """Start the worker task on the running event loop (idempotent)."""
        if self.enabled and self._worker is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._run(), name=f"batcher-{self.encoder.name}")

    async def stop(self) -> None:
        """Stop the worker; requests still waiting get NotReady rather than hanging."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            try:
                await worker
            except asyncio.CancelledError:
                pass
        waiting = [self._carry] if self._carry else []
        self._carry = None
        while self._queue is not None and not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        for pending in waiting:
            if not pending.future.done():
                pending.future.set_exception(_shutting_down())

    async def submit(self, items: np.ndarray) -> np.ndarray:
        """Embed `items` (n, ...) → (n, D), in order, sharing model calls with concurrent requests."""
        if len(items) == 0:
            raise ValueError("submit needs at least one item")
        if not self.enabled:
            return await self._encode_unbatched(items)
        if self._worker is None:  # not started by a lifespan (e.g. a script): start on this loop
            await self.start()
        loop = asyncio.get_running_loop()
        # A request larger than a batch is split; its pieces may travel in different batches.
        pieces = [
            _Pending(items[start : start + self.max_batch_size], loop.create_future())
            for start in range(0, len(items), self.max_batch_size)
        ]
        for piece in pieces:
            self._queue.put_nowait(piece)
        try:
            parts = await asyncio.gather(*(p.future for p in pieces))
        except BaseException:
            for piece in pieces:  # the caller is gone (or failed): its other pieces need not run
                piece.future.cancel()
            raise
        return parts[0] if len(parts) == 1 else np.concatenate(parts)  # (n, D)

    async def _encode_unbatched(self, items: np.ndarray) -> np.ndarray:
        parts = []
        for start in range(0, len(items), self.max_batch_size):
            chunk = items[start : start + self.max_batch_size]
            self._observe(len(chunk))
            parts.append(self._checked(await asyncio.to_thread(self.encoder.encode, chunk), len(chunk)))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    async def _run(self) -> None:
        while True:
            batch = await self._collect()
            batch = [p for p in batch if not p.future.done()]  # callers that went away
            if not batch:
                continue
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
                continue
            start = 0
            for p in batch:
                end = start + len(p.items)
                if not p.future.done():
                    p.future.set_result(embeddings[start:end])
                start = end

    async def _collect(self) -> list[_Pending]:
        """The next batch: the first waiting piece, then whatever arrives within max_wait_ms that fits."""
        first, self._carry = self._carry, None
        if first is None:
            first = await self._queue.get()
        batch, rows = [first], len(first.items)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_ms / 1000.0
        while rows < self.max_batch_size:
            if self._queue.empty():
                remaining_s = deadline - loop.time()
                if remaining_s <= 0:
                    break
                # asyncio.wait, not wait_for: a cancelled Queue.get leaves its item in the queue,
                # whereas wait_for on 3.11 can drop an item that arrives just as the timeout fires.
                getter = asyncio.ensure_future(self._queue.get())
                try:
                    done, _ = await asyncio.wait({getter}, timeout=remaining_s)
                finally:
                    if not getter.done():
                        getter.cancel()
                if not done:
                    break
                piece = getter.result()
            else:
                piece = self._queue.get_nowait()
            if rows + len(piece.items) > self.max_batch_size:
                self._carry = piece  # would overflow this batch: it opens the next one
                break
            batch.append(piece)
            rows += len(piece.items)
        return batch

    def _checked(self, embeddings: np.ndarray, rows: int) -> np.ndarray:
        if embeddings.ndim != 2 or len(embeddings) != rows:
            raise RuntimeError(f"model {self.encoder.name} returned {embeddings.shape} for {rows} inputs; expected ({rows}, D)")
        return embeddings

    def _observe(self, rows: int) -> None:
        if self.on_batch is not None:
            self.on_batch(rows)
