"""The typed feature cells of a whole table, kept as compact columns (no dict per row).

Ingest must hold every row's typed metadata until the rows are grouped by patient. As one dict
per row, SLICE-3D (401,059 rows, 38 features) costs gigabytes; as columns a numerical cell is
8 bytes (NaN = missing: typed numbers are always finite), a boolean 1 byte, and a category one
pointer to a string shared by every equal cell (`type_column` returns one object per distinct
cell). A record is rebuilt as a dict only when its patient is written.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence


class TypedColumns:
    """Patient and lesion feature columns of a table, appended chunk by chunk.

    Examples:
        >>> cols = TypedColumns(patient=[{"name": "age", "type": "numerical"}], lesion=[])
        >>> cols.extend({"age": [45.0, None]}, 2)
        0
        >>> cols.patient(1)
        {'age': None}
    """

    def __init__(self, *, patient: Sequence[dict], lesion: Sequence[dict]) -> None:
        self.patient_names = tuple(f["name"] for f in patient)
        self.lesion_names = tuple(f["name"] for f in lesion)
        self.features = {f["name"]: f for f in [*patient, *lesion]}  # name -> schema feature
        self._kind = {name: f["type"] for name, f in self.features.items()}
        self._data: dict[str, array | list] = {
            name: array("d") if kind == "numerical" else array("b") if kind == "boolean" else []
            for name, kind in self._kind.items()
        }
        self.n = 0

    def extend(self, typed: dict[str, list], n: int) -> int:
        """Append a chunk of `n` rows (feature name -> n typed values, None = missing); returns
        the index of the chunk's first row."""
        start = self.n
        if set(typed) != set(self._data) or any(len(v) != n for v in typed.values()):
            raise ValueError(f"every feature column needs {n} values")
        for name, values in typed.items():
            kind = self._kind[name]
            if kind == "numerical":
                self._data[name].extend(math.nan if v is None else v for v in values)
            elif kind == "boolean":
                self._data[name].extend(-1 if v is None else int(v) for v in values)
            else:
                self._data[name].extend(values)
        self.n += n
        return start

    def value(self, name: str, i: int):
        x = self._data[name][i]
        kind = self._kind[name]
        if kind == "numerical":
            return None if math.isnan(x) else x
        if kind == "boolean":
            return None if x < 0 else bool(x)
        return x

    def patient(self, i: int) -> dict:
        """The patient fields of row i (a new dict)."""
        return {name: self.value(name, i) for name in self.patient_names}

    def lesion(self, i: int) -> dict:
        """The lesion fields of row i (a new dict)."""
        return {name: self.value(name, i) for name in self.lesion_names}
