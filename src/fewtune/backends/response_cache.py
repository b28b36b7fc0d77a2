"""A persistent cache of HTTP model responses (SQLite), so that a re-run of the same requests sends none.

A pass of requests (a method's scoring of the test rows) also stores the seconds it took when every one of
its requests was sent, under the SHA-256 of its request keys, so that a re-run answered by the cache reports
the measured throughput rather than that of cache lookups.

A request's key is the SHA-256 of the canonical JSON (sorted keys, no spaces) of its endpoint, the server's
base URL, the model and the request body; the API key is never part of a request body, so it is never
hashed or stored. The value is the response JSON. Each answer is committed as soon as it arrives, so an
interrupted run leaves every finished response behind and the next run resumes from them.

The cache is shared by the worker threads of one backend: one connection, opened with
``check_same_thread=False``, used under a lock (sqlite3 connections must not be used from two threads at
once). WAL journaling lets another process (a second run, ``sqlite3`` on the command line) read the file
while a run writes to it.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from typing_extensions import TypedDict

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    endpoint TEXT NOT NULL,
    response TEXT NOT NULL,
    created REAL NOT NULL
)
"""
MEASUREMENTS = """
CREATE TABLE IF NOT EXISTS measurements (
    key TEXT PRIMARY KEY,
    seconds REAL NOT NULL,
    created REAL NOT NULL
)
"""
BUSY_TIMEOUT_S = 30.0
"""How long a write waits for another process holding the database lock (sqlite3's ``timeout``)."""


def request_key(endpoint: str, base_url: str, model: str, body: Mapping[str, Any]) -> str:
    """The cache key of one request: SHA-256 hex of the canonical JSON of what decides its answer."""
    canonical = json.dumps(
        {"endpoint": endpoint, "base_url": base_url.rstrip("/"), "model": model, "body": body},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class Refusal(TypedDict):
    """A 4xx answer, stored when it is a fact about the server (the probe's refusals)."""

    message: str
    status: int
    code: str | None


class CachedAnswer(TypedDict, total=False):
    """What is stored for a request: its response JSON and the seconds it took, or its refusal."""

    response: Mapping[str, Any]
    seconds: float | None
    refused: Refusal


class ResponseCache:
    """Response JSON by request key, in a SQLite file (created with its folder if missing)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._connection = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_S, check_same_thread=False, isolation_level=None
        )
        with self._lock:
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute("PRAGMA synchronous=NORMAL")
            self._connection.execute(SCHEMA)
            self._connection.execute(MEASUREMENTS)

    def get(self, key: str) -> CachedAnswer | None:
        """The stored response for ``key``, or None."""
        with self._lock:
            row = self._connection.execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone()
        stored: CachedAnswer | None = None if row is None else json.loads(row[0])
        return stored

    def put(self, key: str, endpoint: str, response: CachedAnswer) -> None:
        """Store (or replace) the response for ``key``; committed at once (autocommit)."""
        text = json.dumps(response, ensure_ascii=False, separators=(",", ":"))
        with self._lock:
            self._connection.execute(
                "INSERT OR REPLACE INTO responses (key, endpoint, response, created) VALUES (?, ?, ?, ?)",
                (key, endpoint, text, time.time()),
            )

    def get_seconds(self, key: str) -> float | None:
        """A stored measurement (the seconds a pass of requests took when all were sent), or None."""
        with self._lock:
            query = "SELECT seconds FROM measurements WHERE key = ?"
            row = self._connection.execute(query, (key,)).fetchone()
        return None if row is None else float(row[0])

    def put_seconds(self, key: str, seconds: float) -> None:
        with self._lock:
            self._connection.execute(
                "INSERT OR REPLACE INTO measurements (key, seconds, created) VALUES (?, ?, ?)",
                (key, seconds, time.time()),
            )

    def __len__(self) -> int:
        with self._lock:
            (count,) = self._connection.execute("SELECT COUNT(*) FROM responses").fetchone()
        return int(count)

    def close(self) -> None:
        with self._lock:
            self._connection.close()

    def __repr__(self) -> str:
        return f"ResponseCache({str(self.path)!r})"
