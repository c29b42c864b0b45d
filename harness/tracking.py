"""Tracker: every result record goes to a JSON-lines file (always) and to MLflow (embedded sqlite by
default, a server for teams); an unreachable server costs a warning, never a record."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from harness.records import ResultRecord

if TYPE_CHECKING:
    import torch

DISABLED_URIS = ("off", "none", "disabled", "")
DEFAULT_EXPERIMENT = "dpcache-bench"


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


def new_invocation_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


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


def _to_uint8_images(images: torch.Tensor) -> list[Any]:
    """(N,C,H,W) or (N,F,C,H,W) in [0,1] → one HWC uint8 array per prompt (video: middle frame)."""
    x = images.detach().float().cpu().clamp(0, 1)
    if x.dim() == 5:
        x = x[:, x.shape[1] // 2]
    arr = (x.permute(0, 2, 3, 1).numpy() * 255).round().astype("uint8")
    return [a[..., 0] if a.shape[-1] == 1 else a for a in arr]


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


def schedule_figure(record: ResultRecord) -> Any:
    """A step strip: T cells, key (full-compute) steps filled."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    t = record.identity.num_steps
    fig, ax = plt.subplots(figsize=(max(4.0, t * 0.12), 0.9))
    keys = set(record.schedule.key_steps or [])
    ax.bar(range(t), [1] * t, width=0.9, color=["#1f77b4" if i in keys else "#dddddd" for i in range(t)])
    ax.set_yticks([])
    ax.set_xlim(-0.5, t - 0.5)
    ax.set_title(f"{record.model} {record.config_tag}: {len(keys)}/{t} full steps", fontsize=8)
    fig.tight_layout()
    return fig


class Tracker:
    """Writes each `ResultRecord` to `json_path` (one flushed line per record, appended under a file
    lock) and to MLflow through `MlflowClient` with explicit run ids — one parent run per (invocation,
    model), one child per (method, budget) — so pytest-xdist workers never share a global active run."""

    def __init__(
        self,
        json_path: str | os.PathLike[str],
        *,
        mlflow_uri: str | None = None,
        experiment: str = DEFAULT_EXPERIMENT,
        invocation_id: str | None = None,
    ) -> None:
        self.json_path = Path(json_path).resolve()
        self.mlflow_uri = resolve_tracking_uri(mlflow_uri)
        self.experiment = experiment
        self.invocation_id = invocation_id or new_invocation_id()
        self.mlflow_error: str | None = None
        self.records_written = 0
        self.run_ids: dict[str, str] = {}  # config test id → child run id
        self._client: Any = None
        self._experiment_id: str | None = None
        self._parents: dict[str, str] = {}

    # ------------------------------------------------------------------ public
    def log(
        self,
        record: ResultRecord,
        *,
        images: torch.Tensor | None = None,
        artifacts: Sequence[str | os.PathLike[str]] = (),
        plot: bool = True,
    ) -> str | None:
        """Append the record to the JSON lines, then log it to MLflow. Returns the child run id, or
        None when MLflow is off or failed (with a `TrackingUnavailableWarning` the first time)."""
        line = json.dumps({"invocation": self.invocation_id, **record.to_dict()}, sort_keys=True, default=str)
        with _append_locked(self.json_path) as f:
            f.write(line + "\n")
        self.records_written += 1
        if self.mlflow_uri is None or self.mlflow_error is not None:
            return None
        try:
            with self._mlflow_lock(), warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # MLflow's own SQLAlchemy deprecations
                run_id = self._log_mlflow(record, images, artifacts, plot)
            self.run_ids[record.test_id] = run_id
            return run_id
        except Exception as e:
            msg = f"{type(e).__name__}: {e}"
            self.mlflow_error = msg if len(msg) < 400 else msg[:400] + " ..."
            warnings.warn(
                f"MLflow tracking server {self.mlflow_uri} was unreachable ({self.mlflow_error}); "
                f"nothing is lost: the records are in {self.json_path}",
                TrackingUnavailableWarning,
                stacklevel=2,
            )
            return None

    def close(self) -> None:
        """Mark this process's parent runs finished (later workers may still add children)."""
        if self._client is None or self.mlflow_error is not None:
            return
        with contextlib.suppress(Exception), self._mlflow_lock():
            for run_id in self._parents.values():
                self._client.set_terminated(run_id, "FINISHED")

    def summary(self) -> str:
        """Where the records went, for the session summary."""
        lines = [f"dpcache: {self.records_written} result record(s) in JSON lines {self.json_path}"]
        if self.mlflow_uri is None:
            lines.append("dpcache: MLflow tracking off")
        elif self.mlflow_error:
            lines.append(
                f"dpcache: MLflow {self.mlflow_uri} was unreachable ({self.mlflow_error}); records kept in {self.json_path}"
            )
        else:
            lines.append(
                f"dpcache: MLflow store {self.mlflow_uri} (experiment {self.experiment!r}, invocation {self.invocation_id})"
            )
        return "\n".join(lines)

    # ------------------------------------------------------------------ MLflow
    def _mlflow_lock(self) -> contextlib.AbstractContextManager[Any]:
        """Serialise MLflow writes from xdist workers on one machine (sqlite allows one writer)."""
        digest = hashlib.sha256(str(self.mlflow_uri).encode()).hexdigest()[:16]
        return FileLock(str(Path(tempfile.gettempdir()) / f"dpcache-mlflow-{digest}.lock"), timeout=600)

    def _artifact_location(self) -> str | None:
        uri = str(self.mlflow_uri)
        if uri.startswith("sqlite:///"):
            return (Path(uri[len("sqlite:///") :]).parent / "mlruns").resolve().as_uri()
        return None

    def _ensure_client(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=self.mlflow_uri)
            exp = client.get_experiment_by_name(self.experiment)
            exp_id = (
                exp.experiment_id
                if exp
                else client.create_experiment(self.experiment, artifact_location=self._artifact_location())
            )
            self._client, self._experiment_id = client, exp_id
        return self._client

    def _parent_run(self, record: ResultRecord) -> str:
        if record.model in self._parents:
            return self._parents[record.model]
        client = self._client
        flt = (
            f"tags.`dpcache.invocation` = '{self.invocation_id}' and tags.`dpcache.model` = '{record.model}' "
            "and tags.`dpcache.role` = 'parent'"
        )
        found = client.search_runs([self._experiment_id], filter_string=flt, max_results=1)
        if found:
            run_id = found[0].info.run_id
        else:
            tags = {
                "dpcache.invocation": self.invocation_id,
                "dpcache.model": record.model,
                "dpcache.role": "parent",
            }
            tags["dpcache.suite"] = record.identity.suite
            tags.update(self._provenance_tags(record))
            run = client.create_run(
                self._experiment_id,
                tags=tags,
                run_name=f"{record.identity.suite}-{record.model}-{self.invocation_id}",
            )
            run_id = run.info.run_id
        self._parents[record.model] = run_id
        return run_id

    @staticmethod
    def _provenance_tags(record: ResultRecord) -> dict[str, str]:
        prov = record.provenance
        tags = {"git_sha": prov.git_sha or "unknown", "device": prov.device or "unknown"}
        tags.update({f"version.{k}": v for k, v in prov.versions.items()})
        return tags

    def _log_mlflow(self, record: ResultRecord, images: Any, artifacts: Sequence[Any], plot: bool) -> str:
        from mlflow.entities import Metric, Param, RunTag

        client = self._ensure_client()
        parent = self._parent_run(record)
        tags = {
            "mlflow.parentRunId": parent,
            "dpcache.invocation": self.invocation_id,
            "dpcache.model": record.model,
        }
        tags["dpcache.role"] = "child"
        tags.update(
            {
                "dpcache.config_tag": record.config_tag,
                "dpcache.method": record.method,
                **self._provenance_tags(record),
            }
        )
        child = client.create_run(self._experiment_id, tags=tags, run_name=record.test_id).info.run_id
        params = {
            "suite": record.identity.suite,
            "model": record.model,
            "scale": record.identity.scale,
            "device_class": record.identity.device_class,
            "method": record.method,
            "budget": record.identity.budget,
            "num_steps": record.identity.num_steps,
            "config_tag": record.config_tag,
            "full_steps": record.schedule.full_steps,
            "schedule": json.dumps(record.schedule.key_steps),
            "reference_key": json.dumps(record.references.keys),
            "num_prompts": record.identity.num_prompts,
            "outcome": record.outcome.status,
            **{f"knob.{k}": v for k, v in record.identity.knobs.items()},
        }
        now = int(time.time() * 1000)
        metrics = [
            Metric(k, float(v), now, 0) for k, v in record.metric_values().items() if isinstance(v, float)
        ]
        for name, values in record.quality.per_prompt.items():
            metrics += [
                Metric(f"{name}.per_prompt", float(v), now, i) for i, v in enumerate(values) if v is not None
            ]
        sp = record.speed
        if sp.cache_hits:
            metrics.append(Metric("cache_hits", float(sum(sp.cache_hits)), now, 0))
        if sp.flops is not None:
            metrics.append(Metric("flops", float(sp.flops), now, 0))
        # eval_measured_K: on the evaluation prompts (knob.calibration_measured_K: the knob search's prompts)
        if sp.measured_k is not None:
            metrics.append(Metric("eval_measured_K", float(sp.measured_k), now, 0))
        if sp.matched is not None:  # 1: eval_measured_K within ±5 % of K; 0: UNMATCHED, not ranked at K
            metrics.append(Metric("eval_compute_matched", float(sp.matched), now, 0))
        unavailable = {f"unavailable.{k}": v[:5000] for k, v in record.unavailable().items()}
        client.log_batch(
            child,
            metrics=metrics,
            params=[Param(k, str(v)[:6000]) for k, v in params.items()],
            tags=[RunTag(k, str(v)) for k, v in unavailable.items()],
        )
        client.log_dict(child, record.to_dict(), "record.json")
        if record.quality.per_prompt:
            client.log_text(child, per_prompt_csv(record), "per_prompt.csv")
        if images is not None:
            for i, img in enumerate(_to_uint8_images(images)):
                client.log_image(child, img, key="prompt_images", step=i)
        if plot and record.schedule.key_steps is not None:
            fig = schedule_figure(record)
            try:
                client.log_figure(child, fig, "schedule.png")
            finally:
                import matplotlib.pyplot as plt

                plt.close(fig)
        for path in artifacts:
            client.log_artifact(child, str(path))
        client.set_terminated(child, "FINISHED")
        return child
