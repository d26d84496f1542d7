"""Zip archives whose bytes depend on their content only: fixed timestamps, fixed workbook dates."""

from __future__ import annotations

import importlib.util
import io
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path

FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_FIXED_W3CDTF = "2000-01-01T00:00:00Z"
_CORE_DATES = re.compile(rb"(<dcterms:(?:created|modified)\b[^>]*>)[^<]*(</dcterms:)")


def write_xlsx(path: Path, header: Sequence[str], rows: list[tuple]) -> None:
    """Write a one-sheet workbook to `path`; nothing when no xlsx writer is installed.

    openpyxl is used when installed, otherwise pandas with the xlsxwriter engine. When neither
    is installed (the project does not depend on either) the `<Class>.metadata.xlsx` files are
    skipped: nothing in medkfp reads them, and a CSV-content file named .xlsx would be a lie.
    The workbook is re-zipped with fixed timestamps so the bytes depend on the content only.
    """
    buffer = io.BytesIO()
    if importlib.util.find_spec("openpyxl") is not None:
        import openpyxl

        workbook = openpyxl.Workbook()
        sheet = workbook.active
        sheet.title = "Sheet1"
        sheet.append(list(header))
        for row in rows:
            sheet.append(list(row))
        workbook.save(buffer)
    elif importlib.util.find_spec("xlsxwriter") is not None:
        import pandas as pd

        pd.DataFrame(rows, columns=list(header)).to_excel(buffer, index=False, engine="xlsxwriter")
    else:
        return
    path.write_bytes(_reproducible_zip(buffer.getvalue()))


def _reproducible_zip(data: bytes) -> bytes:
    """The same archive with fixed member timestamps and fixed docProps/core.xml dates."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            content = src.read(info.filename)
            if info.filename == "docProps/core.xml":
                content = _CORE_DATES.sub(lambda m: m.group(1) + _FIXED_W3CDTF.encode() + m.group(2), content)
            member = zipfile.ZipInfo(info.filename, date_time=FIXED_ZIP_TIME)
            member.compress_type = zipfile.ZIP_DEFLATED
            member.external_attr = 0o600 << 16
            dst.writestr(member, content)
    return out.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    """A zip archive (stored, not compressed) of {member name: bytes}, with fixed timestamps."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=FIXED_ZIP_TIME), data)
    return out.getvalue()
