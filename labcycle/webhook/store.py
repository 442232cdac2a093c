"""The deliveries the receiver has accepted, in a small SQLite file, so a replay emits nothing.

Two keys are remembered per accepted delivery: the provider's delivery id (GitHub and GitLab resend a
failed delivery with the same id) and the SHA-256 of the body. The body digest matters because neither
provider signs the delivery id: a captured, correctly signed body sent again under a new id is still a
replay. A real second push always differs in its body (new commit ids, GitHub's pushed_at).

Bounded: entries older than `keep_days` and beyond the newest `keep` are dropped on every claim.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from labcycle.errors import LabcycleError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    provider TEXT NOT NULL,
    delivery TEXT NOT NULL,
    body_sha256 TEXT NOT NULL UNIQUE,
    received REAL NOT NULL,
    PRIMARY KEY (provider, delivery)
);
CREATE INDEX IF NOT EXISTS deliveries_received ON deliveries (received);
"""


class DeliveryStore:
    """claim() is atomic across threads and processes (SQLite's write lock), so two concurrent copies
    of one delivery cannot both be accepted."""

    def __init__(self, path: Path, keep: int = 10_000, keep_days: float = 7.0):
        self.path = Path(path)
        self.keep = keep
        self.keep_seconds = keep_days * 86400
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = self._connect()
            try:
                db.executescript(_SCHEMA)
            finally:
                db.close()
        except (OSError, sqlite3.Error) as exc:
            raise LabcycleError(f"cannot open the delivery store ({exc}); point delivery_store at a writable SQLite "
                                "file, or move this one away", where=str(self.path)) from None

    def _connect(self) -> sqlite3.Connection:
        # One short-lived connection per call: safe from any thread, nothing to close on shutdown.
        return sqlite3.connect(self.path, timeout=10, isolation_level=None)

    def claim(self, provider: str, delivery: str, body_sha256: str, now: float | None = None) -> bool:
        """Record the delivery; False when its id or its body was already accepted (a replay)."""
        now = time.time() if now is None else now
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("INSERT INTO deliveries (provider, delivery, body_sha256, received) VALUES (?, ?, ?, ?)",
                           (provider, delivery, body_sha256, now))
            except sqlite3.IntegrityError:
                db.execute("ROLLBACK")
                return False
            db.execute("DELETE FROM deliveries WHERE received < ?", (now - self.keep_seconds,))
            db.execute("DELETE FROM deliveries WHERE received < (SELECT received FROM deliveries "
                       "ORDER BY received DESC LIMIT 1 OFFSET ?)", (self.keep - 1,))
            db.execute("COMMIT")
            return True
        finally:
            db.close()

    def release(self, provider: str, delivery: str) -> None:
        """Forget a claimed delivery whose event could not be delivered, so its redelivery is accepted."""
        db = self._connect()
        try:
            db.execute("DELETE FROM deliveries WHERE provider = ? AND delivery = ?", (provider, delivery))
        finally:
            db.close()

    def __contains__(self, key: tuple[str, str]) -> bool:
        db = self._connect()
        try:
            row = db.execute("SELECT 1 FROM deliveries WHERE provider = ? AND delivery = ?", key).fetchone()
        finally:
            db.close()
        return row is not None

    def __len__(self) -> int:
        db = self._connect()
        try:
            return int(db.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0])
        finally:
            db.close()
