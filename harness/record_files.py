"""Reading JSON-lines record files: every valid line as a typed record, every invalid one named (file and
line), never dropped silently."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from harness.records import ResultRecord


class RecordFileWarning(UserWarning):
    """A JSON-lines record file holds a line that is not a valid record (torn write, hand edit)."""


def read_jsonl(path: str | Path) -> list[tuple[str, ResultRecord]]:
    """(invocation, record) for every valid line of a JSON-lines file, in file order. An invalid line (a torn
    write, a hand edit) is not dropped silently: a `RecordFileWarning` names the file and the line number."""
    p = Path(path)
    out: list[tuple[str, ResultRecord]] = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            rec = ResultRecord.from_dict(data)
        except (ValueError, TypeError, KeyError) as e:
            why = f"not JSON ({e.msg})" if isinstance(e, json.JSONDecodeError) else str(e)
            warnings.warn(f"{p}:{n}: skipped an invalid record line: {why}", RecordFileWarning, stacklevel=2)
            continue
        out.append((str(data.get("invocation", "unknown")), rec))
    return out
