"""The benchmarks' HTTP side: the servers they start on loopback (embedserve's app under uvicorn,
started, waited for and stopped alike for every bench); their HTTP/1.1 client, prebuilt request
bytes over keep-alive connections, as light as a client can be, since it shares the machine's CPU
with the server it measures; and what a run reports (latency percentiles, the CPU the client and
the server used).

Uvicorn answers every request with a Content-Length, so a response is read as its head and then
exactly that many bytes; a response without one is refused rather than guessed at.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

HOST = "127.0.0.1"  # loopback only: a benchmark never listens on a public address
ROOT = Path(__file__).resolve().parents[1]  # the checkout, whose serving/ the servers run
# a peer may export its model when it starts (infinity's optimum engine does); a dead server ends the wait sooner
STARTUP_TIMEOUT_S = 600.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_gateway(env: dict[str, str], port: int, workers: int = 1, log=None) -> subprocess.Popen:
    """embedserve's app (serving.app) under uvicorn on HOST:`port` in a child process whose
    environment is `env` (its EMBEDSERVE_* settings), `workers` processes; its output to `log`
    (a file), else to this process's."""
    command = [sys.executable, "-m", "uvicorn", "serving.app:create_app", "--factory", "--host", HOST,
               "--port", str(port), "--log-level", "warning", "--no-access-log", "--workers", str(workers)]
    return subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT if log else None)


async def wait_ready(client: httpx.AsyncClient, server: subprocess.Popen, path: str = "/readyz", what: str = "the server", *,
                     model: str | None = None, in_a_row: int = 1, timeout_s: float = STARTUP_TIMEOUT_S) -> float:
    """Seconds until `server` is ready: `path` answers 200, or, with `model`, its answer (embedserve's
    /readyz) lists `model` as loaded, whatever the other models under the artifacts folder do (they
    make /readyz answer 503 but do not concern a bench of one model). `in_a_row` answers in a row,
    each on a fresh connection: with several workers each connection may land on another one, and
    each loads the models on its own. RuntimeError if the server exits or takes longer than `timeout_s`."""
    start, ready_in_a_row = time.monotonic(), 0
    while time.monotonic() - start < timeout_s:
        if server.poll() is not None:
            raise RuntimeError(f"{what} exited with code {server.returncode} before it was ready")
        try:
            answer = await client.get(path, headers={"Connection": "close"})
            if model is None:
                ready = answer.status_code == 200
            else:
                ready = any(m["name"] == model and m["state"] == "loaded" for m in answer.json().get("models", []))
        except (httpx.TransportError, ValueError):
            ready = False
        ready_in_a_row = ready_in_a_row + 1 if ready else 0
        if ready_in_a_row >= in_a_row:
            return time.monotonic() - start
        await asyncio.sleep(0.05 if ready else 0.2)
    raise RuntimeError(f"{what} was not ready within {timeout_s:.0f} s")


def stop(server: subprocess.Popen, timeout_s: float = 20.0) -> int:
    """SIGTERM `server`, then SIGKILL if it has not exited within `timeout_s`; its exit code."""
    server.terminate()
    try:
        return server.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        server.kill()
        return server.wait()


def http_request(method: str, path: str, port: int, body: bytes | None = None, content_type: str | None = None) -> bytes:
    """One whole HTTP/1.1 request (keep-alive, the default), built once so that sending it is a write."""
    head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
    if body is not None:
        head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + (body or b"")


async def read_head(reader: asyncio.StreamReader) -> tuple[int, int, bool]:
    """(status, Content-Length, whether the server closes the connection after it) of the next response."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status, length, close = int(lines[0].split(" ", 2)[1]), None, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.lower()
        if name == "content-length":
            length = int(value)
        elif name == "connection":
            close = value.strip().lower() == "close"
    if length is None:
        raise ValueError(f"response without Content-Length: {head[:200]!r}")
    return status, length, close


async def round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, bytes]:
    """Send one prebuilt request on a keep-alive connection → (status, body)."""
    writer.write(request)
    status, length, _ = await read_head(reader)
    return status, await reader.readexactly(length)


def process_cpu_s(*pids: int) -> float | None:
    """CPU seconds (user + system, all threads) processes `pids` and their children (uvicorn's
    workers, Triton's Python-backend stubs) have used so far; None off Linux."""
    total, found, wanted = 0, False, {str(pid) for pid in pids}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # state, ppid, ...
        except OSError:
            continue  # a process that ended meanwhile
        if stat.parent.name in wanted or fields[1] in wanted:
            total += int(fields[11]) + int(fields[12])  # utime, stime
            found = True
    return total / os.sysconf("SC_CLK_TCK") if found else None


def latency_summary(latencies_s: list[float], count: int, wall_s: float, unit: str) -> dict:
    """`count` `unit`s (images, requests) in `wall_s`: the rate, and the p50 and p99 of `latencies_s`."""
    ms = np.asarray(latencies_s) * 1000.0
    return {unit: count, "wall_s": round(wall_s, 3), f"{unit}_per_s": round(count / wall_s, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2)}


@dataclass(frozen=True)
class ClosedLoopRun:
    """What KeepAliveConnections.drive measured."""

    latencies_s: list[float]  # one per request, send to last byte of the answer
    wall_s: float  # from the first request sent to the last answer read
    client_cpu_s: float  # this process's CPU time meanwhile
    server_cpu_s: float | None  # the server's processes' CPU time meanwhile; None off Linux

    def cores(self) -> dict:
        """The cores the client and the server used on average (they share the machine)."""
        return {"client_cpu": round(self.client_cpu_s / self.wall_s, 2),
                "server_cpu": None if self.server_cpu_s is None else round(self.server_cpu_s / self.wall_s, 2)}


class KeepAliveConnections:
    """`concurrency` keep-alive connections to a server on HOST, one request in flight on each:
    a closed loop, whose every answer must be 200. Open it with `async with`."""

    def __init__(self, port: int, concurrency: int):
        self.port, self.concurrency = port, concurrency
        self.connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def __aenter__(self) -> KeepAliveConnections:
        self.connections = [await asyncio.open_connection(HOST, self.port) for _ in range(self.concurrency)]
        return self

    async def __aexit__(self, *exc) -> None:
        for _, writer in self.connections:
            writer.close()

    async def warm_up(self, requests_bytes: list[bytes], rounds: int = 1) -> None:
        """`rounds` times, every connection at once, connection i sending request i (cycling): pays
        for the server's lazy initialisation and first batches before anything is timed."""
        for _ in range(rounds):
            await asyncio.gather(*(round_trip(r, w, requests_bytes[i % len(requests_bytes)])
                                   for i, (r, w) in enumerate(self.connections)))

    async def drive(self, requests_bytes: list[bytes], requests: int, server_pids: tuple[int, ...]) -> ClosedLoopRun:
        """`requests` requests (cycling through `requests_bytes`), each connection sending its next as
        soon as its last is answered."""
        latencies: list[float] = []
        counter = iter(range(requests))

        async def worker(reader, writer) -> None:
            for i in counter:
                request = requests_bytes[i % len(requests_bytes)]
                start = time.perf_counter()
                status, body = await round_trip(reader, writer, request)
                latencies.append(time.perf_counter() - start)
                if status != 200:
                    raise RuntimeError(f"{request.split(b' HTTP/', 1)[0].decode()} answered {status}: {body[:300]!r}")

        server_cpu_start, cpu_start, start = process_cpu_s(*server_pids), time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker(r, w) for r, w in self.connections))
        wall_s = time.perf_counter() - start
        client_cpu_s = time.process_time() - cpu_start
        server_cpu_end = process_cpu_s(*server_pids)
        return ClosedLoopRun(latencies, wall_s, client_cpu_s,
                             None if server_cpu_start is None else server_cpu_end - server_cpu_start)


class PooledClient:
    """Requests from any number of tasks over a pool of keep-alive connections, opened as needed;
    an idle connection the server has closed (its keep-alive timeout) is reopened and the request
    sent again once. Never raises for a bad answer: a transport failure is the status
    'error:<exception>', for a benchmark that counts what the server answers under overload."""

    def __init__(self, port: int):
        self.port = port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def request(self, raw: bytes) -> str:
        """The status of the answer to prebuilt request `raw`, as text ('200'), or 'error:<exception>'."""
        reused = bool(self.idle)
        reader, writer = self.idle.pop() if reused else await asyncio.open_connection(HOST, self.port)
        try:
            writer.write(raw)
            try:
                status, length, close = await read_head(reader)
            except asyncio.IncompleteReadError as e:
                if reused and not e.partial:  # closed while idle, before any byte of an answer: retry once
                    writer.close()
                    reader, writer = await asyncio.open_connection(HOST, self.port)
                    writer.write(raw)
                    status, length, close = await read_head(reader)
                else:
                    raise
            await reader.readexactly(length)
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
            writer.close()
            return f"error:{type(e).__name__}"
        if close:
            writer.close()
        else:
            self.idle.append((reader, writer))
        return str(status)
