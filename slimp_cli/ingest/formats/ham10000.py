"""HAM10000 (Tschandl et al. 2018): `HAM10000_metadata.csv` + HAM10000_images_part_1/2/.

Images are `<image_id>.jpg` in any folder below the source. There are no patient ids: the
images of one `lesion_id` form one "patient" with no patient-level features.
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


class Ham10000(Adapter):
    name = "ham10000"
    schema = "ham10000"
    help = "HAM10000: HAM10000_metadata.csv + image folders, images named <image_id>.jpg"

    def read(self, source: Path, schema: dict) -> SourceTable:
        table = find_table(source, ("HAM10000_metadata.csv", "HAM10000_metadata", "metadata.csv"))
        return csv_table(table, folder_locator(table.parent))
