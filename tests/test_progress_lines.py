"""Progress without a terminal: plain lines per leaf or phase, at an interval and when each finishes."""

from __future__ import annotations

import time

from labcycle.progress import ProgressLines


def test_a_line_when_a_task_finishes_and_per_tick_for_what_moved():
    lines: list[str] = []
    with ProgressLines(lines.append, interval=0) as progress:  # no ticker thread: ticks by hand
        a = progress.add_task("knowledge/history/moon", total=10)
        b = progress.add_task("tune skills", total=4, info="")
        progress.tick()
        assert [line.split(":")[0] for line in lines] == ["knowledge/history/moon", "tune skills"]
        progress.update(a, completed=3)
        lines.clear()
        progress.tick()
        assert len(lines) == 1 and lines[0].startswith("knowledge/history/moon: 3/10")  # b did not move
        lines.clear()
        progress.tick()
        assert len(lines) == 1 and lines[0].startswith("still working: 2 running")
        progress.update(b, completed=4, info="loss 1.2345")
        assert lines[-1].startswith("tune skills: 4/4, loss 1.2345") and lines[-1].endswith("done")
        progress.update(a, completed=7)
    assert lines[-1].startswith("knowledge/history/moon: 7/10")  # where it stopped, said at the end
    assert sum("tune skills" in line for line in lines) == 1  # its done line only: no repeats after it


def test_the_ticker_prints_at_its_interval():
    lines: list[str] = []
    with ProgressLines(lines.append, interval=0.05) as progress:
        task = progress.add_task("knowledge/a", total=5)
        for step in range(1, 4):
            progress.update(task, completed=step)
            time.sleep(0.12)
    assert sum(line.startswith("knowledge/a: ") for line in lines) >= 3, lines
