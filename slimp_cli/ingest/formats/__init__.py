"""Dataset adapters: one per supported release layout, plus `csv` (generic) and `synth`.

`FORMATS` maps the FORMAT argument of `slimp ingest` to its adapter.
"""

from __future__ import annotations

from ...core.errors import SlimpError
from .base import Adapter, SourceTable
from .csv_generic import CsvTable, SynthCohort
from .derm7pt import Derm7pt
from .ham10000 import Ham10000
from .hiba import Hiba
from .pad_ufes_20 import PadUfes20
from .ph2 import Ph2
from .slice3d import Slice3d

FORMATS: dict[str, Adapter] = {
    a.name: a
    for a in (
        Slice3d(),
        PadUfes20(),
        Hiba(),
        Ham10000(),
        Ph2(),
        Derm7pt(),
        CsvTable(),
        SynthCohort(),
    )
}


def get_adapter(name: str) -> Adapter:
    """The adapter for a FORMAT name; SlimpError listing the known ones otherwise."""
    try:
        return FORMATS[name]
    except KeyError:
        raise SlimpError(f"unknown format '{name}'; known formats: {', '.join(FORMATS)}") from None


__all__ = ["FORMATS", "Adapter", "SourceTable", "get_adapter"]
