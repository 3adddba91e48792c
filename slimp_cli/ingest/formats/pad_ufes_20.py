"""PAD-UFES-20 (Pacheco et al. 2020): `metadata.csv` + the release's image folders.

The release ships images in `images/` or `imgs_part_1..3/` (any depth is searched); the table's
`img_id` says `PAT_x_y_z.png` while users often hold `.jpg` conversions, so images are found
by file stem whatever the extension.
"""

from __future__ import annotations

from pathlib import Path

from .base import (
    Adapter,
    SourceTable,
    csv_table,
    find_table,
    folder_locator,
)


class PadUfes20(Adapter):
    name = "pad-ufes-20"
    schema = "pad-ufes-20"
    help = "PAD-UFES-20: metadata.csv + images/ (or imgs_part_*/), images found by stem"

    def read(self, source: Path, schema: dict) -> SourceTable:
        table = find_table(source, ("metadata.csv",))
        return csv_table(table, folder_locator(table.parent))
