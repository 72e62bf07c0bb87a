"""The drain: claim, grant, run, record, acknowledge; continuously, within a time budget."""

from __future__ import annotations

from ..state import DrainState
from .loop import Drain, drain
from .report import DrainReport, Outcome

__all__ = ["Drain", "DrainReport", "DrainState", "Outcome", "drain"]
