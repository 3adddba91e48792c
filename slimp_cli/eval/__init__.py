"""Evaluation of feature stores: linear probe, kNN, metadata baselines, retrieval, extrapolation.

Library entry points: `probe.run_probe`, `retrieval.run_retrieval`, `extrapolate.extrapolate`.
Warnings meant for the user are collected in a `WarningLog` (printed by the CLI and written to
the JSON reports), not issued through Python's `warnings` module.
"""

from __future__ import annotations


class WarningLog(list):
    """Ordered list of one-line user warnings; adding the same message twice keeps one copy."""

    def add(self, message: str) -> None:
        if message not in self:
            self.append(message)
