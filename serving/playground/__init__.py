"""The playground's files: the page served at `/`, and its scripts and style sheet under
`/playground/`. Plain files, no build step; serving/routers/playground.py serves them and
serving/security.py lets exactly these paths through without a key (they hold no data: what the
page shows comes from API calls, each made with the key the user typed)."""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).parent
PAGE = FOLDER / "index.html"
PAGE_PATH = "/"
ASSET_PREFIX = "/playground/"
MEDIA_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
ASSETS = {p.name: MEDIA_TYPES[p.suffix] for p in sorted(FOLDER.iterdir()) if p.suffix in MEDIA_TYPES}  # name -> type
OPEN_PATHS = (PAGE_PATH, *(ASSET_PREFIX + name for name in ASSETS))
