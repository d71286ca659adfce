"""The JSON report of a benchmark or load tool: printed, and written with --out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from model.io import atomic_write_text


def emit(result: dict[str, Any], out: Path | None) -> None:
    """JSON to stdout, and to `out` when given (written atomically)."""
    text = json.dumps(result, indent=2)
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, text + "\n")
