"""``edray data inspect``: read a dataset, validate every record, summarize.

Inputs: a file or folder in any supported format (Parquet, JSONL, LLaVA JSON + images, a Hugging Face
``save_to_disk`` folder, Lance). Outputs: an :class:`InspectSummary` (format, counts of valid and
quarantined records by reason, schema, a sample row) and, on request, the quarantine table as Parquet.

Run: ``edray data inspect PATH [--kind support|eval] [--format auto|...] [--quarantine-out FILE]``.
"""

from __future__ import annotations

import io
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from edray.data.config import ReadConfig
from edray.data.formats import detect_format
from edray.data.quarantine import reason_category, target_schema
from edray.data.readers import read_and_split
from edray.resources import ensure_ray


@dataclass
class InspectSummary:
    """What ``edray data inspect`` reports.

    Attributes:
        path: the input.
        format: the format read (detected when ``auto``).
        kind: ``support`` or ``eval``.
        valid: number of valid records.
        quarantined: number of quarantined records (a whole unreadable file counts as one).
        by_reason: quarantined records per reason category.
        by_field: quarantined records per field.
        schema: the normalized schema of the valid rows.
        sample: up to ``sample_rows`` valid rows, images shown as ``PNG 32x32, 1234 bytes``.
        quarantine_examples: a few quarantine rows (source, position, field, reason).
        quarantine_out: where the quarantine table was written, if asked.
        wall_s: seconds taken.
    """

    path: str
    format: str
    kind: str
    valid: int
    quarantined: int
    by_reason: dict[str, int]
    by_field: dict[str, int]
    schema: str
    sample: list[dict[str, Any]] = field(default_factory=list)
    quarantine_examples: list[dict[str, Any]] = field(default_factory=list)
    quarantine_out: str | None = None
    wall_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict."""
        return asdict(self)


def describe_image(data: bytes) -> str:
    """``"PNG 32x32, 1234 bytes"`` (or ``"<undecodable>, N bytes"``) for showing an image without its bytes."""
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as img:
            return f"{img.format} {img.width}x{img.height}, {len(data)} bytes"
    except Exception:
        return f"<undecodable>, {len(data)} bytes"


def _printable_row(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    out["images"] = [describe_image(b) for b in row.get("images") or []]
    return out


def inspect(
    path: str | os.PathLike[str],
    kind: str | None = None,
    fmt: str | None = None,
    config: ReadConfig | None = None,
    quarantine_out: str | os.PathLike[str] | None = None,
    sample_rows: int = 1,
    examples: int = 10,
) -> InspectSummary:
    """Read and validate a dataset; count valid and quarantined records.

    Args:
        path: file or folder.
        kind: ``support`` or ``eval`` (default: ``config.kind``).
        fmt: format or ``auto`` (default: ``config.format``).
        config: reader limits and defaults.
        quarantine_out: write the quarantine table here (Parquet; ``.jsonl`` writes JSON lines).
        sample_rows: how many valid rows to show.
        examples: how many quarantine rows to show.

    Returns:
        The summary.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: unknown kind or format, or a format that cannot be detected.
    """
    started = time.time()
    cfg = config or ReadConfig()
    kind = kind or cfg.kind
    fmt = fmt or cfg.format
    resolved = detect_format(path) if fmt == "auto" else fmt
    ensure_ray()
    valid, quarantine = read_and_split(path, kind, resolved, cfg)
    n_valid = valid.count()
    sample = [_printable_row(r) for r in valid.take(sample_rows)] if sample_rows > 0 and n_valid else []
    reasons = quarantine["reason"].to_pylist()
    fields = quarantine["field"].to_pylist()
    out_path = None
    if quarantine_out is not None:
        out_path = Path(quarantine_out)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        if out_path.suffix.lower() in (".jsonl", ".json"):
            import json

            with out_path.open("w") as f:
                for row in quarantine.to_pylist():
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
        else:
            pq.write_table(quarantine, out_path)
    ex = quarantine.select(["source", "position", "field", "reason"]).slice(0, examples).to_pylist()
    return InspectSummary(
        path=str(path),
        format=resolved,
        kind=kind,
        valid=n_valid,
        quarantined=quarantine.num_rows,
        by_reason=dict(Counter(reason_category(r) for r in reasons).most_common()),
        by_field=dict(Counter(f or "<none>" for f in fields).most_common()),
        schema=_schema_text(target_schema(kind)),
        sample=sample,
        quarantine_examples=ex,
        quarantine_out=str(out_path) if out_path else None,
        wall_s=round(time.time() - started, 2),
    )


def _schema_text(schema: pa.Schema) -> str:
    return "\n".join(f"{f.name}: {f.type}{'' if f.nullable else ' (required)'}" for f in schema)
