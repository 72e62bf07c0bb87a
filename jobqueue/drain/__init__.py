"""The drain: claim, grant, run, record, acknowledge; continuously, within a time budget."""

from __future__ import annotations

from .loop import Drain, drain
from .report import DrainReport, Outcome
from .state import DrainState

__all__ = ["Drain", "DrainReport", "DrainState", "Outcome", "drain"]
