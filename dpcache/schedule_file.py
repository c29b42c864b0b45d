"""The tuned schedule file (`dpcache tune --out tuned.json`): key steps, per-segment orders, provenance, checks."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpcache.atomic_io import write_text_atomic
from dpcache.errors import DPCacheError, field_mismatches

FORMAT = "dpcache-schedule"
FORMAT_VERSION = 1


class ScheduleFileError(DPCacheError):
    """A file that is not a valid dpcache schedule file."""


class ScheduleFileMismatchError(DPCacheError):
    """A schedule file tuned for another model, step count or predictor than the one it is used with."""


@dataclass
class ScheduleFile:
    """What `dpcache tune` chose for one model, T and budget K, and how it chose it.

    `segment_orders[k]` is the Taylor order used for the steps predicted after `key_steps[k]`;
    `predictor_order` is their maximum (the order of the predictor that runs the schedule).
    `candidates` lists every setting the search tried with its calibration error; `prompt_hashes` and
    `seeds` say which prompts it was tuned on (never the evaluation prompts).
    """

    model_id: str
    weights_hash: str
    num_steps: int
    budget: int
    key_steps: list[int]
    segment_orders: list[int]
    predictor: str = "taylor"
    predictor_order: int = 2
    first_full_steps: int = 3
    last_full_steps: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    metric: str = "psnr"
    calibration_score: float = 0.0
    released_score: float | None = None
    prompt_hashes: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    samples: int = 0
    search_space: dict[str, Any] = field(default_factory=dict)
    candidates: list[dict[str, Any]] = field(default_factory=list)
    dpcache_version: str = ""
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ScheduleFileError when the key steps, orders or budget are inconsistent."""
        steps, orders, T = list(self.key_steps), list(self.segment_orders), int(self.num_steps)
        if not steps or steps[0] != 0 or steps != sorted(set(steps)) or steps[-1] >= T:
            raise ScheduleFileError(f"key_steps must increase from 0 and stay below T={T}, got {steps}")
        if len(steps) != self.budget:
            raise ScheduleFileError(f"budget is {self.budget} but the file lists {len(steps)} key steps")
        if len(orders) != len(steps) or any(not 0 <= o <= self.predictor_order for o in orders):
            raise ScheduleFileError(
                f"segment_orders must give one order in 0..{self.predictor_order} per key step, got {orders}"
            )

    @property
    def orders_by_step(self) -> dict[int, int]:
        """{key step: order of the predictions after it}, the predictor's `segment_orders`."""
        return dict(zip(self.key_steps, self.segment_orders))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the file as JSON atomically (temp file in the same directory, then os.replace)."""
        return write_text_atomic(
            path, json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n", mode=0o644
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ScheduleFile:
        """Read and validate a schedule file written by :meth:`save`."""
        p = Path(path)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ScheduleFileError(f"{p} is not a JSON schedule file: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ScheduleFileError(f'{p} is not a dpcache schedule file (no "format": "{FORMAT}")')
        if int(data.get("format_version", 0)) > FORMAT_VERSION:
            raise ScheduleFileError(
                f"{p} uses schedule format {data['format_version']}, newer than this dpcache ({FORMAT_VERSION})"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted({"model_id", "num_steps", "budget", "key_steps", "segment_orders"} - set(data))
        if missing:
            raise ScheduleFileError(f"{p} lacks the field(s) {', '.join(missing)}")
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except (TypeError, ValueError) as exc:
            raise ScheduleFileError(f"{p}: {exc}") from None

    def check_compatible(
        self,
        *,
        num_steps: int | None = None,
        predictor: str | None = None,
        predictor_order: int | None = None,
        model_id: str | None = None,
        weights_hash: str | None = None,
        source: str = "schedule file",
    ) -> None:
        """Raise ScheduleFileMismatchError naming every given field that differs from the file."""
        expected = {
            "num_steps": num_steps,
            "predictor": predictor,
            "predictor_order": predictor_order,
            "model_id": model_id,
            "weights_hash": weights_hash,
        }
        diffs = field_mismatches(self, expected)
        if diffs:
            raise ScheduleFileMismatchError(
                f"{source} does not match this configuration (" + "; ".join(diffs) + "); "
                "run `dpcache tune` for this model, step count and predictor"
            )
