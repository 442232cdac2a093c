"""The headline moved to the base: labcycle/headline.py (the release stage, the flows and the CLI read it too).
Kept for tasks/cycle.py, which imports it from here until it moves."""

from __future__ import annotations

from labcycle.headline import Change, GateView, Headline, headline, number

__all__ = ["Change", "GateView", "Headline", "headline", "number"]
