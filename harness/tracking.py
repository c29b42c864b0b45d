"""Tracker: every result record goes to a JSON-lines file (always) and to MLflow (embedded sqlite by
default, a server for teams); an unreachable server costs one warning and seconds, never a record."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import socket
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from filelock import FileLock

from harness.records import ResultRecord

if TYPE_CHECKING:
    import torch

DISABLED_URIS = ("off", "none", "disabled", "")
EXPERIMENT_ENV = "DPCACHE_MLFLOW_EXPERIMENT"
# MLflow's HTTP client retries a refused connection for minutes by default; bounded here (unless set).
HTTP_RETRY_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}
PROBE_TIMEOUT_S = 3.0


class TrackingUnavailableWarning(UserWarning):
    """MLflow could not be reached or raised; the records are still in the JSON-lines file."""


def resolve_tracking_uri(uri: str | None) -> str | None:
    """Explicit uri, else $MLFLOW_TRACKING_URI, else the embedded `sqlite:///<cwd>/mlflow.db`;
    `off`/`none` disables MLflow (JSON lines only)."""
    if uri is not None:
        return None if uri.strip().lower() in DISABLED_URIS else uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{(Path.cwd() / 'mlflow.db').resolve()}"


def sqlite_path(uri: str) -> Path | None:
    """The resolved database file of a `sqlite:///...` URI (relative paths from the working directory)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///") :].split("?", 1)[0]).expanduser().resolve()


def store_key(uri: str) -> str:
    """What identifies a tracking store whatever the URI's spelling: the resolved database file for sqlite,
    else scheme://host:port/path lower-cased without a trailing slash."""
    db = sqlite_path(uri)
    if db is not None:
        return f"sqlite:{db}"
    u = urlparse(uri)
    if u.scheme in ("", "file"):
        return f"file:{Path(u.path or uri).expanduser().resolve()}"
    return f"{u.scheme}://{(u.hostname or '').lower()}:{u.port or ''}{u.path.rstrip('/')}"


def artifact_location(uri: str) -> str | None:
    """`<db folder>/mlruns` for an embedded sqlite store (None: the server decides)."""
    db = sqlite_path(uri)
    return (db.parent / "mlruns").as_uri() if db is not None else None


def reachable(uri: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when an http(s) tracking server accepts a TCP connection within `timeout` s (or the store is
    local), else why not, one line."""
    u = urlparse(uri)
    if u.scheme not in ("http", "https"):
        return None
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        with socket.create_connection((u.hostname or "127.0.0.1", port), timeout=timeout):
            return None
    except OSError as e:
        return f"no connection to {u.hostname}:{port} within {timeout:g} s ({e.strerror or e})"


def bound_http_retries() -> None:
    """Bound MLflow's HTTP retries so a server that dies mid-run costs seconds (a user's setting wins)."""
    for k, v in HTTP_RETRY_ENV.items():
        os.environ.setdefault(k, v)


def new_invocation_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


def record_id(invocation: str, record: ResultRecord | dict[str, Any]) -> str:
    """A stable id of one record of one invocation: the hash of its content without the tracking fields,
    so a replay recognises a record already logged (its stored `provenance.record_id` when present)."""
    data = record.to_dict() if isinstance(record, ResultRecord) else dict(record)
    prov = dict(data.get("provenance") or {})
    if prov.get("record_id"):
        return str(prov["record_id"])
    for k in ("record_id", "mlflow_run_id", "mlflow_run_url"):
        prov.pop(k, None)
    body = {k: v for k, v in data.items() if k != "invocation"} | {"provenance": prov}
    text = json.dumps({"invocation": invocation, **body}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def experiment_name(record: ResultRecord, explicit: str | None = None) -> str:
    """`explicit`, else $DPCACHE_MLFLOW_EXPERIMENT, else one experiment per suite and scale."""
    return (
        explicit
        or os.environ.get(EXPERIMENT_ENV)
        or f"dpcache-{record.identity.suite}-{record.identity.scale}"
    )


def ui_command(uri: str | None) -> str:
    """The command that browses `uri`: `dpcache-bench ui --mlflow-uri URI`, or the server's own address."""
    if uri is None:
        return ""
    if urlparse(uri).scheme in ("http", "https"):
        return f"open {uri} in a browser"
    return f"dpcache-bench ui --mlflow-uri {uri}"


@contextlib.contextmanager
def _append_locked(path: Path) -> Iterator[io.TextIOWrapper]:
    """Open `path` for appending under an exclusive lock on the file itself (flock), or a sidecar lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows
        fcntl = None  # type: ignore[assignment]
    if fcntl is None:
        with FileLock(str(path) + ".lock"), open(path, "a", encoding="utf-8") as f:
            yield f
        return
    with open(path, "a", encoding="utf-8") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield f
        finally:
            f.flush()
            os.fsync(f.fileno())
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def per_prompt_rows(record: ResultRecord) -> dict[str, list[Any]]:
    """The per-prompt table as columns: prompt index, prompt, seed, cache hits, each per-prompt metric."""
    per_prompt, refs = record.quality.per_prompt, record.references
    names = sorted(per_prompt)
    n = max([len(v) for v in per_prompt.values()] + [len(record.speed.cache_hits)], default=0)

    def at(seq: Sequence[Any], i: int) -> Any:
        return seq[i] if i < len(seq) else None

    cols: dict[str, list[Any]] = {"prompt_index": list(range(n))}
    cols["prompt"] = [at(refs.prompts, i) or "" for i in range(n)]
    cols["seed"] = [at(refs.seeds, i) for i in range(n)]
    cols["cache_hits"] = [at(record.speed.cache_hits, i) for i in range(n)]
    for m in names:
        cols[m] = [None if at(per_prompt[m], i) is None else float(per_prompt[m][i]) for i in range(n)]
    return cols


def per_prompt_csv(record: ResultRecord) -> str:
    """The per-prompt table: one row per prompt index, one column per metric with per-prompt values."""
    per_prompt, prompts = record.quality.per_prompt, record.references.prompts
    names = sorted(per_prompt)
    n = max((len(v) for v in per_prompt.values()), default=0)
    lines = [",".join(["prompt_index", "prompt", *names])]
    for i in range(n):
        prompt = prompts[i] if i < len(prompts) else ""
        vals = [per_prompt[m][i] if i < len(per_prompt[m]) else None for m in names]
        cells = [str(i), json.dumps(prompt)] + ["" if v is None else repr(float(v)) for v in vals]
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"


class Tracker:
    """Writes each `ResultRecord` to `json_path` (one flushed line per record, appended under a file
    lock) and to MLflow through `MlflowClient` with explicit run ids — one parent run per (invocation,
    model), one child per (method, budget) — so pytest-xdist workers never share a global active run.
    MLflow writes are serialised per store (keyed by the resolved database, not the URI's spelling)."""

    def __init__(
        self,
        json_path: str | os.PathLike[str],
        *,
        mlflow_uri: str | None = None,
        experiment: str | None = None,
        invocation_id: str | None = None,
    ) -> None:
        self.json_path = Path(json_path).resolve()
        self.mlflow_uri = resolve_tracking_uri(mlflow_uri)
        self.experiment = experiment or os.environ.get(EXPERIMENT_ENV) or None
        self.invocation_id = invocation_id or new_invocation_id()
        self.mlflow_error: str | None = None
        self.records_written = 0
        self.not_logged = 0  # records in the JSON lines but not in MLflow (replay them)
        self.run_ids: dict[str, str] = {}  # config test id → child run id
        self.experiments: set[str] = set()
        self._logger: Any = None
        self._probed = False

    # ------------------------------------------------------------------ public
    def log(
        self,
        record: ResultRecord,
        *,
        images: torch.Tensor | None = None,
        artifacts: Sequence[str | os.PathLike[str]] = (),
        plot: bool = True,
    ) -> str | None:
        """Open the record's MLflow run, append the record (with its run id) to the JSON lines, then log
        it to MLflow. Returns the child run id, or None when MLflow is off or failed (one
        `TrackingUnavailableWarning`, the first time; the record is in the JSON lines either way)."""
        prov = record.provenance
        prov.record_id = prov.record_id or record_id(self.invocation_id, record)
        run_id = None
        if self._mlflow_ok():
            try:
                with self.mlflow_lock(), warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    run_id = self._ensure_logger().start_child(record, self.invocation_id, self.experiment)
            except Exception as e:
                self._fail(e)
        line = json.dumps({"invocation": self.invocation_id, **record.to_dict()}, sort_keys=True, default=str)
        with _append_locked(self.json_path) as f:
            f.write(line + "\n")
        self.records_written += 1
        if run_id is not None and self.mlflow_error is None:
            try:
                with self.mlflow_lock(), warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    self._logger.finish_child(run_id, record, images=images, artifacts=artifacts, plot=plot)
                self.run_ids[record.test_id] = run_id
                self.experiments.add(experiment_name(record, self.experiment))
                return run_id
            except Exception as e:
                self._fail(e)
        self.not_logged += self.mlflow_uri is not None
        return None

    def close(self) -> None:
        """Write each parent run's summary (table, Pareto plot, strips) from all its children — other
        xdist workers' included — and mark it finished (later workers may still add children)."""
        if self._logger is None or self.mlflow_error is not None:
            return
        with contextlib.suppress(Exception), self.mlflow_lock(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._logger.close_parents()

    def replay_command(self) -> str:
        return f"dpcache-bench replay --json-in {self.json_path} --mlflow-uri {self.mlflow_uri}"

    def summary(self) -> str:
        """Where the records went, for the session summary."""
        lines = [f"dpcache: {self.records_written} result record(s) in JSON lines {self.json_path}"]
        if self.mlflow_uri is None:
            lines.append("dpcache: MLflow tracking off")
        elif self.mlflow_error or self.not_logged:
            lines.append(
                f"dpcache: {self.not_logged} record(s) not in MLflow; once it is back: `{self.replay_command()}`"
            )
        else:
            exps = ", ".join(sorted(self.experiments)) or experiment_name_hint(self.experiment)
            lines.append(
                f"dpcache: MLflow store {self.mlflow_uri} (experiment {exps}, invocation {self.invocation_id}); "
                f"browse: {ui_command(self.mlflow_uri)}"
            )
        return "\n".join(lines)

    # ------------------------------------------------------------------ MLflow
    def mlflow_lock(self) -> FileLock:
        """Serialise MLflow writes of every process on this machine to one store (sqlite allows one
        writer; two processes must not race to create its schema), keyed by `store_key`."""
        digest = hashlib.sha256(store_key(str(self.mlflow_uri)).encode()).hexdigest()[:16]
        return FileLock(str(Path(tempfile.gettempdir()) / f"dpcache-mlflow-{digest}.lock"), timeout=600)

    def _mlflow_ok(self) -> bool:
        if self.mlflow_uri is None or self.mlflow_error is not None:
            return False
        if not self._probed:
            self._probed = True
            bound_http_retries()
            why = reachable(self.mlflow_uri)
            if why is not None:
                self._fail(ConnectionError(why))
                return False
        return True

    def _ensure_logger(self) -> Any:
        if self._logger is None:
            from harness.tracking_mlflow import MlflowLogger

            self._logger = MlflowLogger(str(self.mlflow_uri))
        return self._logger

    def _fail(self, e: BaseException) -> None:
        msg = f"{type(e).__name__}: {e}".replace("\n", " ")
        self.mlflow_error = msg if len(msg) < 300 else msg[:300] + " ..."
        warnings.warn(
            f"MLflow tracking server {self.mlflow_uri} was unreachable ({self.mlflow_error}); "
            f"nothing is lost: the records are in {self.json_path} (tracking off for this run; replay "
            f"later with `{self.replay_command()}`)",
            TrackingUnavailableWarning,
            stacklevel=3,
        )


def experiment_name_hint(explicit: str | None) -> str:
    return explicit or os.environ.get(EXPERIMENT_ENV) or "dpcache-<suite>-<scale>"
