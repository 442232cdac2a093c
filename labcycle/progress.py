"""Progress as plain lines, for a console that is not a terminal (a log file, CI, a Prefect worker).

rich draws its bars only at the end there, so a long generation showed "0/24" after 17 minutes. This
takes the same calls as rich's Progress (`add_task`, `update`) and prints one line per leaf or phase:
when it finishes, and every `interval` seconds for each one that moved since its last line. A tick where
nothing moved prints one "still working" line, so a log shows the run is alive.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Line:
    description: str
    total: float | None
    completed: float = 0
    fields: dict[str, Any] = field(default_factory=dict)
    printed: tuple[float, float | None, str] | None = None  # (completed, total, info) of the last line
    done: bool = False

    def state(self) -> tuple[float, float | None, str]:
        return self.completed, self.total, str(self.fields.get("info") or "")

    def render(self, elapsed: float) -> str:
        amount = f"{self.completed:g}/{self.total:g}" if self.total else f"{self.completed:g}"
        info = self.state()[2]
        return f"{self.description}: {amount}{', ' + info if info else ''} ({_clock(elapsed)}){' done' if self.done else ''}"


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class ProgressLines:
    """A context manager; `emit` prints one line (it is called from a background thread too)."""

    def __init__(self, emit: Callable[[str], None], interval: float = 30.0):
        self.emit = emit
        self.interval = interval
        self.lines: dict[int, _Line] = {}
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # rich.progress.Progress's calls, as the CLI's listeners make them
    def add_task(self, description: str, total: float | None = None, **fields: Any) -> int:
        with self.lock:
            task_id = len(self.lines)
            self.lines[task_id] = _Line(description, total, fields=dict(fields))
            return task_id

    def update(self, task_id: int, completed: float | None = None, total: float | None = None, **fields: Any) -> None:
        with self.lock:
            line = self.lines[task_id]
            if completed is not None:
                line.completed = completed
            if total is not None:
                line.total = total
            line.fields.update(fields)
            if not line.done and line.total and line.completed >= line.total:
                line.done = True
                self._print(line)

    # the ticker
    def tick(self) -> None:
        """One round: a line for each unfinished task that moved, else one line saying the work goes on."""
        with self.lock:
            moved = [line for line in self.lines.values() if not line.done and line.state() != line.printed]
            for line in moved:
                self._print(line)
            running = sum(not line.done for line in self.lines.values())
            if not moved:
                what = f"{running} running" if running else "waiting for the first results"
                self.emit(f"still working: {what} ({_clock(time.monotonic() - self.started)})")

    def _print(self, line: _Line) -> None:
        line.printed = line.state()
        self.emit(line.render(time.monotonic() - self.started))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.tick()

    def __enter__(self) -> ProgressLines:
        if self.interval > 0:
            self._thread = threading.Thread(target=self._run, name="labcycle-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self.lock:  # where each unfinished one stopped, when that is news
            for line in self.lines.values():
                if not line.done and line.state() != line.printed:
                    self._print(line)
