"""What a record looks like in MLflow: experiments per suite and scale marked as model training, parent runs
with the summary table, Pareto plot and computed-step strips, children with a per-step `computed` metric."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from harness.context import to_uint8_images
from harness.records import ResultRecord
from harness.tracking import (
    artifact_location,
    experiment_name,
    per_prompt_csv,
    per_prompt_rows,
)

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # read by the MLflow 3 UI: which page an experiment opens on
EXPERIMENT_KIND = "custom_model_development"  # "model training": runs table, not the GenAI overview
SUMMARY_COLUMNS = ("method", "budget", "flops_speedup", "wall_speedup", "psnr", "eval_measured_K", "run_name")
NOTE = (
    "dpcache benchmark runs: one parent run per (invocation, model) with summary.csv, pareto.png and "
    "strips.png; one child per (method, budget). Compare schedules: select children, chart metric `computed`."
)


def schedule_steps(record: ResultRecord) -> list[float] | None:
    """Per step, the fraction of evaluation passes (prompt × CFG branch) that computed the transformer: 0/1
    for a fixed schedule or `full`, the traced fraction for a method that decides online; None when the
    record has no computed steps on the T-step axis (fewer-steps, an untraced record)."""
    return record.computed_fraction()


def _shade(fraction: float) -> tuple[float, float, float]:
    """Grey (0: reused from the cache on every pass) to blue (1: computed on every pass)."""
    grey, blue = (0.89, 0.89, 0.89), (0.122, 0.467, 0.706)
    f = min(max(float(fraction), 0.0), 1.0)
    return tuple(g + (b - g) * f for g, b in zip(grey, blue))  # type: ignore[return-value]


def _figure(width: float, height: float) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def _close(fig: Any) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)


def schedule_figure(record: ResultRecord) -> Any:
    """A step strip: T cells, key (full-compute) steps filled."""
    t = record.identity.num_steps
    fig, ax = _figure(max(4.0, t * 0.12), 0.9)
    fr = schedule_steps(record) or [0.0] * t
    ax.bar(range(t), [1] * t, width=0.9, color=[_shade(f) for f in fr])
    ax.set_yticks([])
    ax.set_xlim(-0.5, t - 0.5)
    what = (
        "full steps" if all(f in (0.0, 1.0) for f in fr) else "steps computed (mean over prompts × branches)"
    )
    ax.set_title(f"{record.model} {record.config_tag}: {sum(fr):g}/{t} {what}", fontsize=8)
    fig.tight_layout()
    return fig


def strips_figure(rows: list[dict[str, Any]]) -> Any:
    """Every child's computed-step strip, one row per (method, budget), side by side on one step axis."""
    rows = [r for r in rows if r.get("computed")]
    t = max((len(r["computed"]) for r in rows), default=1)
    fig, ax = _figure(max(6.0, t * 0.14 + 2.5), 0.35 * max(len(rows), 1) + 0.9)
    for y, r in enumerate(rows):
        colors = [_shade(c) for c in r["computed"]]
        ax.barh([y] * len(colors), [0.9] * len(colors), left=range(len(colors)), height=0.8, color=colors)
    ax.set_yticks(range(len(rows)), [f"{r['method']} K={r['budget']}" for r in rows], fontsize=7)
    ax.set_xlim(-0.2, t)
    ax.invert_yaxis()
    ax.set_xlabel(
        "step (blue: computed, grey: reused from the cache; shade: fraction of prompts × branches)",
        fontsize=8,
    )
    fig.tight_layout()
    return fig


def pareto_figure(rows: list[dict[str, Any]], title: str) -> Any:
    """PSNR against FLOPs speedup, one point per child, labelled method K."""
    fig, ax = _figure(6.0, 4.2)
    pts = [r for r in rows if r.get("flops_speedup") is not None and r.get("psnr") is not None]
    for r in pts:
        ax.scatter(r["flops_speedup"], r["psnr"], s=18)
        ax.annotate(f"{r['method']} K={r['budget']}", (r["flops_speedup"], r["psnr"]), fontsize=6)
    ax.set_xlabel("FLOPs speedup (x)")
    ax.set_ylabel("PSNR vs full-step reference (dB)")
    ax.set_title(title if pts else f"{title}: no child with both FLOPs speedup and PSNR", fontsize=9)
    fig.tight_layout()
    return fig


class MlflowLogger:
    """Logs records through `MlflowClient` with explicit run ids (callers hold the store lock)."""

    def __init__(self, uri: str) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        self.experiment_ids: dict[str, str] = {}
        self.parents: dict[tuple[str, str], tuple[str, str]] = {}  # (invocation, model) → (exp id, run id)

    def experiment_id(self, name: str) -> str:
        """The experiment `name`, created (or re-tagged) as a model-training experiment."""
        if name in self.experiment_ids:
            return self.experiment_ids[name]
        c = self.client
        exp = c.get_experiment_by_name(name)
        if exp is None:
            exp_id = c.create_experiment(
                name,
                artifact_location=artifact_location(self.uri),
                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, "mlflow.note.content": NOTE},
            )
        else:
            exp_id = exp.experiment_id
            if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
                c.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        self.experiment_ids[name] = exp_id
        return exp_id

    def run_url(self, exp_id: str, run_id: str) -> str | None:
        if not self.uri.startswith(("http://", "https://")):
            return None
        return f"{self.uri.rstrip('/')}/#/experiments/{exp_id}/runs/{run_id}"

    def parent_run(self, record: ResultRecord, invocation: str, exp_id: str) -> str:
        key = (invocation, record.model)
        if key in self.parents and self.parents[key][0] == exp_id:
            return self.parents[key][1]
        flt = (
            f"tags.`dpcache.invocation` = '{invocation}' and tags.`dpcache.model` = '{record.model}' "
            "and tags.`dpcache.role` = 'parent'"
        )
        found = self.client.search_runs([exp_id], filter_string=flt, max_results=1)
        if found:
            run_id = found[0].info.run_id
        else:
            i = record.identity
            tags = {"dpcache.invocation": invocation, "dpcache.model": i.model, "dpcache.role": "parent"}
            tags |= {
                "dpcache.suite": i.suite,
                "dpcache.scale": i.scale,
                "dpcache.device_class": i.device_class,
            }
            tags |= _provenance_tags(record)
            name = f"{i.suite}-{i.model}-{invocation}"
            run_id = self.client.create_run(exp_id, tags=tags, run_name=name).info.run_id
            self.client.log_batch(
                run_id, params=_params({"model": i.model, "suite": i.suite, "scale": i.scale})
            )
        self.parents[key] = (exp_id, run_id)
        return run_id

    def start_child(self, record: ResultRecord, invocation: str, experiment: str | None = None) -> str:
        """Create the record's child run (unique name) and put its id (and URL) into the record."""
        exp_id = self.experiment_id(experiment_name(record, experiment))
        parent = self.parent_run(record, invocation, exp_id)
        tags = {"mlflow.parentRunId": parent, "dpcache.invocation": invocation, "dpcache.role": "child"}
        tags |= {"dpcache.model": record.model, "dpcache.config_tag": record.config_tag}
        tags |= {"dpcache.method": record.method, **_provenance_tags(record)}
        name = f"{record.test_id}-{invocation[-8:]}-{uuid.uuid4().hex[:4]}"
        run_id = self.client.create_run(exp_id, tags=tags, run_name=name).info.run_id
        record.provenance.mlflow_run_id = run_id
        record.provenance.mlflow_run_url = self.run_url(exp_id, run_id)
        return run_id

    def finish_child(
        self, run_id: str, record: ResultRecord, *, images: Any = None, artifacts: Any = (), plot: bool = True
    ) -> None:
        """Params, metrics (`computed` per step, cache hits per sample), the per-prompt table, the prompt
        set as a dataset input, images, artifacts; the `dpcache.record_id` tag last (the replay's mark)."""
        from mlflow.entities import Metric, RunTag

        c, i, sp = self.client, record.identity, record.speed
        params = {
            "suite": i.suite,
            "model": i.model,
            "scale": i.scale,
            "device_class": i.device_class,
            "method": i.method,
            "budget": i.budget,
            "num_steps": i.num_steps,
            "config_tag": i.config_tag,
            "full_steps": record.schedule.full_steps,
            "schedule": json.dumps(record.schedule.key_steps),
            "computed": json.dumps([round(f, 4) for f in fr] if (fr := schedule_steps(record)) else None),
            "reference_key": json.dumps(record.references.keys),
            "num_prompts": i.num_prompts,
            "outcome": record.outcome.status,
            **{f"knob.{k}": v for k, v in i.knobs.items()},
        }
        now = int(time.time() * 1000)
        values = {k: v for k, v in record.metric_values().items() if isinstance(v, float)}
        if sp.cache_hits:  # per sample: the mean over the evaluation prompts (each prompt in the table)
            values["cache_hits"] = sum(sp.cache_hits) / len(sp.cache_hits)
        for k, v in (
            ("flops", sp.flops),
            ("eval_measured_K", sp.measured_k),
            ("eval_compute_matched", sp.matched),
        ):
            if v is not None:
                values[k] = float(v)
        metrics = [Metric(k, float(v), now, 0) for k, v in values.items()]
        steps = schedule_steps(record)
        metrics += [Metric("computed", float(c_), now, s) for s, c_ in enumerate(steps or [])]  # fraction
        tags = [RunTag(f"unavailable.{k}", v[:5000]) for k, v in record.unavailable().items()]
        c.log_batch(run_id, metrics=metrics[:1000], params=_params(params), tags=tags)
        for start in range(1000, len(metrics), 1000):
            c.log_batch(run_id, metrics=metrics[start : start + 1000])
        c.log_dict(run_id, record.to_dict(), "record.json")
        rows = per_prompt_rows(record)
        if rows["prompt_index"]:
            c.log_table(run_id, rows, "per_prompt.json")
            c.log_text(run_id, per_prompt_csv(record), "per_prompt.csv")
        if record.references.prompts:
            self._log_prompt_set(run_id, record)
        if images is not None:
            for n, img in enumerate(to_uint8_images(images)):
                c.log_image(run_id, img, key="prompt_images", step=n)
        if plot and steps is not None and record.method != "full":
            fig = schedule_figure(record)
            try:
                c.log_figure(run_id, fig, "schedule.png")
            finally:
                _close(fig)
        for path in artifacts:
            c.log_artifact(run_id, str(path))
        c.set_tag(run_id, "dpcache.record_id", str(record.provenance.record_id))
        c.set_terminated(run_id, "FINISHED")

    def _log_prompt_set(self, run_id: str, record: ResultRecord) -> None:
        import mlflow.data
        import pandas as pd
        from mlflow.entities import DatasetInput, InputTag

        refs = record.references
        n = len(refs.prompts)
        df = pd.DataFrame(
            {
                "prompt": refs.prompts,
                "seed": (refs.seeds + [None] * n)[:n],
                "reference_key": (refs.keys + [""] * n)[:n],
            }
        )
        ds = mlflow.data.from_pandas(df, name=f"{record.model}-evaluation-prompts")
        tag = InputTag("mlflow.data.context", "evaluation")
        self.client.log_inputs(run_id, datasets=[DatasetInput(ds._to_mlflow_entity(), tags=[tag])])

    # ------------------------------------------------------------------ parents
    def close_parents(self) -> None:
        for exp_id, run_id in list(self.parents.values()):
            self.summarise_parent(exp_id, run_id)
            self.client.set_terminated(run_id, "FINISHED")

    def child_rows(self, exp_id: str, parent: str) -> list[dict[str, Any]]:
        """One row per child of `parent` (every worker's), from MLflow itself, in (method, budget) order."""
        runs = self.client.search_runs(
            [exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'", max_results=5000
        )
        rows = []
        for r in runs:
            p, m = r.data.params, r.data.metrics
            sched = json.loads(p.get("schedule", "null") or "null")
            t = int(p.get("num_steps", 0) or 0)
            computed = json.loads(p.get("computed", "null") or "null")  # per-step fraction (any method)
            if computed is None and sched is not None:  # runs logged before the `computed` param
                computed = [int(s in set(sched)) for s in range(t)]
            if computed is None and p.get("method") == "full" and p.get("outcome") == "ok":
                computed = [1] * t
            rows.append(
                {
                    "method": p.get("method", "?"),
                    "budget": p.get("budget", "None"),
                    "flops_speedup": m.get("flops_speedup"),
                    "wall_speedup": m.get("wall_speedup"),
                    "psnr": m.get("psnr"),
                    "eval_measured_K": m.get("eval_measured_K"),
                    "run_name": r.info.run_name,
                    "computed": computed,
                }
            )
        return sorted(rows, key=lambda r: (r["method"], -int(r["budget"]) if r["budget"].isdigit() else 0))

    def summarise_parent(self, exp_id: str, run_id: str) -> None:
        """summary.csv + the summary table (log_table), pareto.png and strips.png on the parent run."""
        rows = self.child_rows(exp_id, run_id)
        if not rows:
            return
        table = {k: [r[k] for r in rows] for k in SUMMARY_COLUMNS}
        self.client.log_table(run_id, table, "summary_table.json")
        lines = [",".join(SUMMARY_COLUMNS)]
        lines += [",".join("" if r[k] is None else str(r[k]) for k in SUMMARY_COLUMNS) for r in rows]
        self.client.log_text(run_id, "\n".join(lines) + "\n", "summary.csv")
        title = self.client.get_run(run_id).info.run_name
        for fig_fn, name in (
            (lambda: pareto_figure(rows, title), "pareto.png"),
            (lambda: strips_figure(rows), "strips.png"),
        ):
            fig = fig_fn()
            try:
                self.client.log_figure(run_id, fig, name)
            finally:
                _close(fig)


def _params(params: dict[str, Any]) -> list[Any]:
    from mlflow.entities import Param

    return [Param(k, str(v)[:6000]) for k, v in params.items()]


def _provenance_tags(record: ResultRecord) -> dict[str, str]:
    prov = record.provenance
    tags = {"git_sha": prov.git_sha or "unknown", "device": prov.device or "unknown"}
    tags.update({f"version.{k}": v for k, v in prov.versions.items()})
    return tags
