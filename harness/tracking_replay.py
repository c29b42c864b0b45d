"""`dpcache-bench replay`: log the JSON-lines records that are not yet in MLflow (a server that was down),
idempotently — a record whose id is already on a finished run is skipped."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

from harness.record_files import RecordFileWarning
from harness.records import ResultRecord
from harness.tracking import Tracker, bound_http_retries, experiment_name, reachable, record_id


class ReplayError(ValueError):
    """The JSON lines cannot be read or the tracking server cannot be reached (one line)."""


@dataclass
class ReplayResult:
    logged: int = 0
    already: int = 0
    invalid_lines: int = 0


def read_lines(path: Path) -> tuple[list[tuple[str, ResultRecord]], int]:
    """(invocation, record) per valid line; invalid lines are warned about by line number and counted."""
    if not path.is_file():
        raise ReplayError(f"{path}: no such JSON-lines file")
    out, bad = [], 0
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            out.append((str(data.get("invocation", "unknown")), ResultRecord.from_dict(data)))
        except (ValueError, TypeError, KeyError) as e:
            bad += 1
            warnings.warn(f"{path}:{n}: skipped an invalid record line: {e}", RecordFileWarning, stacklevel=2)
    return out, bad


def logged_ids(tracker: Tracker, experiments: set[str]) -> set[str]:
    """Record ids already on a FINISHED child run of `experiments`."""
    logger = tracker._ensure_logger()
    ids: set[str] = set()
    for name in experiments:
        exp = logger.client.get_experiment_by_name(name)
        if exp is None:
            continue
        runs = logger.client.search_runs(
            [exp.experiment_id],
            filter_string="tags.`dpcache.role` = 'child' and attributes.status = 'FINISHED'",
            max_results=50000,
        )
        ids |= {r.data.tags["dpcache.record_id"] for r in runs if "dpcache.record_id" in r.data.tags}
    return ids


def replay(json_in: Path, mlflow_uri: str, experiment: str | None = None) -> ReplayResult:
    """Log every record of `json_in` whose id is not yet in MLflow under its own invocation's parent run."""
    bound_http_retries()
    why = reachable(mlflow_uri)
    if why is not None:
        raise ReplayError(f"MLflow {mlflow_uri}: {why}; the records stay in {json_in}")
    rows, bad = read_lines(json_in)
    result = ReplayResult(invalid_lines=bad)
    tracker = Tracker(json_in, mlflow_uri=mlflow_uri, experiment=experiment)
    with tracker.mlflow_lock(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        done = logged_ids(tracker, {experiment_name(r, tracker.experiment) for _, r in rows})
        logger = tracker._ensure_logger()
        for invocation, rec in rows:
            rid = record_id(invocation, rec)
            if rid in done:
                result.already += 1
                continue
            rec.provenance.record_id = rid
            run_id = logger.start_child(rec, invocation, tracker.experiment)
            logger.finish_child(run_id, rec, plot=rec.schedule.key_steps is not None)
            done.add(rid)
            result.logged += 1
        logger.close_parents()
    return result
