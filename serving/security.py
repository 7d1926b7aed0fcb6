"""Who may talk to the server: API keys, the Host names it answers to, and the refusal to serve a
network without keys.

With `api_keys` or `api_keys_file` set, every route but liveness and readiness, the playground's
page and files (which hold no data) and `/metrics` when `metrics_public` needs `Authorization:
Bearer <key>`: 401 without one, 403 with a wrong one. Keys are kept and compared as sha256
digests (a keys file holds only digests, one per line, so the server's disk never holds a key),
each comparison in constant time. The Host check refuses names not in `allowed_hosts`, which
stops DNS rebinding from reaching a server on loopback through a browser. Pure ASGI middleware:
no per-request thread hop or body buffering.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
from pathlib import Path

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.errors import error_body
from serving.playground import OPEN_PATHS as PLAYGROUND_PATHS
from serving.settings import Settings

OPEN_PATHS = ("/healthz", "/readyz")  # load balancers and orchestrators probe these without a key
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
KEY_HELD = "embedserve.key_held"  # the request state's flag: an accepted key was sent


def key_digest(key: str) -> str:
    """The sha256 hex digest a keys file holds for `key`: `echo -n KEY | sha256sum`."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def configured_digests(settings: Settings) -> list[str]:
    """The digests of every accepted key: those of `api_keys`, and the lines of `api_keys_file`."""
    digests = [key_digest(k.strip()) for k in settings.api_keys.split(",") if k.strip()]
    if settings.api_keys_file:
        path = Path(settings.api_keys_file)
        if not path.is_file():
            raise ValueError(f"EMBEDSERVE_API_KEYS_FILE {path} does not exist; write one sha256 hex digest per line")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            line = line.split("#", 1)[0].strip().lower()
            if not line:
                continue
            if len(line) != 64 or any(c not in "0123456789abcdef" for c in line):
                raise ValueError(f"{path} line {number} is not a sha256 hex digest; write `echo -n KEY | sha256sum` output")
            digests.append(line)
    return digests


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings) -> None:
    """Refuse to serve a non-loopback address with no keys, unless that is asked for explicitly; and a
    keys file that cannot be read, at start-up rather than at the first request."""
    digests = configured_digests(settings)
    if not is_loopback(settings.host) and not digests and not settings.allow_unauthenticated:
        raise ValueError(f"refusing to serve {settings.host} without API keys: set EMBEDSERVE_API_KEYS (or "
                         "EMBEDSERVE_API_KEYS_FILE), or EMBEDSERVE_ALLOW_UNAUTHENTICATED=true to serve it open")


async def _refuse(scope: Scope, send: Send, status: int, error: str, detail: str,
                  headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps(error_body(scope["path"], status, error, detail)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


class AccessMiddleware:
    """The Host check, then the key check, before a request reaches a route."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.digests = [d.encode() for d in configured_digests(settings)]
        self.open_paths = OPEN_PATHS + PLAYGROUND_PATHS + (("/metrics",) if settings.metrics_public else ())
        hosts = {h.strip().lower().strip("[]") for h in settings.allowed_hosts.split(",") if h.strip()}
        self.any_host = "*" in hosts
        self.hosts = hosts  # bare names and addresses: "localhost", "::1"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if sum(name == b"host" for name, _ in scope["headers"]) > 1:  # which one a proxy read is anyone's guess
            return await _refuse(scope, send, 400, "bad_host", "the request has more than one Host header; send one")
        if not self.any_host:
            host = headers.get(b"host", b"").decode("latin-1").lower()
            if host.startswith("["):  # [::1]:8000 -> ::1
                name = host[1:host.find("]")]
            else:  # localhost:8000 -> localhost
                name = host.rpartition(":")[0] if host.count(":") == 1 else host
            if name not in self.hosts:
                return await _refuse(scope, send, 400, "bad_host", f"Host {host!r} is not served here; the server answers to "
                                     f"{', '.join(sorted(self.hosts))} (EMBEDSERVE_ALLOWED_HOSTS)")
        if self.digests:
            scheme, _, key = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
            sent = scheme.lower() == "bearer" and bool(key.strip())
            matched = False
            if sent:
                digest = key_digest(key.strip()).encode()
                for known in self.digests:  # every digest compared, in constant time each
                    matched |= hmac.compare_digest(digest, known)
            if scope["path"] not in self.open_paths:
                if not sent:
                    return await _refuse(scope, send, 401, "unauthorized", "send an API key: Authorization: Bearer <key>",
                                         [(b"www-authenticate", b'Bearer realm="embedserve"')])
                if not matched:
                    return await _refuse(scope, send, 403, "forbidden", "this API key is not accepted here")
            scope.setdefault("state", {})[KEY_HELD] = matched  # what an open route may show (/readyz)
        await self.app(scope, receive, send)


def holds_key(request: Request) -> bool:
    """Whether a request may see what the server holds: it sent an accepted key, or the server has
    no keys. Open routes (/readyz) answer the rest with less."""
    return request.scope.get("state", {}).get(KEY_HELD, True)
