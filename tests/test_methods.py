"""The method registry: core methods plus whatever baselines are registered (even none), prompt
disjointness, transformer FLOPs counting, and knob search through a fake threshold method."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from harness import methods as hm


def test_registry_has_core_methods_and_every_baseline():
    from baselines.base import load_all

    reg = hm.registry()
    assert list(reg)[:3] == ["full", "fewer-steps", "dpcache"]
    assert set(load_all()) <= set(reg)
    for m in reg.values():
        assert m.knob and isinstance(m.supports("flux"), tuple)


def test_registry_works_with_zero_baselines(monkeypatch):
    import baselines.base

    monkeypatch.setattr(baselines.base, "load_all", lambda: {})
    own = ["full", "fewer-steps", "dpcache", "dpcache-exact", "dpcache-tuned", "dpcache-o1", "dpcache-o0"]
    assert list(hm.registry()) == own and hm.resolve_methods("all") == own


def test_resolve_methods():
    assert hm.resolve_methods(None) == list(hm.CORE_METHODS)
    assert hm.resolve_methods("dpcache,full,dpcache") == ["dpcache", "full"]
    with pytest.raises(ValueError, match=r"unknown method.*nope"):
        hm.resolve_methods("full,nope")


def test_prompt_sets_disjoint():
    from harness.zoo.registry import get_spec

    spec = get_spec("flux-tiny")
    hm.check_prompts_disjoint(spec.calibration_prompts, spec.evaluation_prompts)
    with pytest.raises(hm.PromptOverlapError, match=r"must be disjoint.*'b'"):
        hm.check_prompts_disjoint(["a", "b"], ["b", "c"], "m")


@dataclass
class _Spec:
    name: str = "fake"
    family: str = "flux"
    scale: str = "tiny"

    def pipeline_kwargs(self, prompt, steps=None):
        return {"prompt": prompt, "num_inference_steps": steps}


def _fake_pipe():
    """What a context reads from its pipeline to name cached artefacts: a scheduler and a transformer's dtype."""
    from types import SimpleNamespace

    import torch

    transformer = SimpleNamespace(parameters=lambda: iter([torch.zeros(1)]))
    return SimpleNamespace(scheduler=SimpleNamespace(config={"shift": 1.0}), transformer=transformer)


class _FakeCtx(hm.ModelContext):
    """Compute = 50 × (1 − 0.9·threshold) full steps, as FLOPs (one step = 100 FLOPs)."""

    knob: float = 0.0

    def transformer_flops(self, prompt, seed, steps=None):
        return int(100 * self.num_steps * (1 - 0.9 * self.knob)), None

    def full_flops(self):
        return 100 * self.num_steps


def _fake_method(ctx):
    from baselines.base import CacheMethod

    def apply(pipe, knob, num_steps, artifacts):
        ctx.knob = knob

    return CacheMethod(
        name="fakecache",
        families=frozenset({"flux"}),
        knob="threshold",
        apply=apply,
        remove=lambda pipe: None,
        cache_hits=lambda pipe: 7,
        never_skip=0.0,
    )


def test_baseline_knob_search_matches_budget_and_caches(tmp_path):
    ctx = _FakeCtx(_Spec(), _fake_pipe(), 50, ("c1", "c2"), ("e1",), "0" * 64, tmp_path)
    from harness.knob_search import KnobSearch

    bm = hm.BaselineMethod(_fake_method(ctx), KnobSearch(knob_range=(0.0, 1.0)))
    cfg = bm.configure(ctx, 13)
    assert cfg.config_tag == "fakecache-K13" and cfg.is_cache and cfg.adaptive
    assert abs(cfg.match.measured - 13) <= 0.65 and cfg.knobs["threshold"] == cfg.match.value
    assert (tmp_path / "budgets.json").is_file()
    with pytest.raises(hm.UnreachableBudget, match="nearest budgets"):
        bm.configure(ctx, 2)  # below the method's floor of 5


def test_context_refuses_overlapping_prompts(tmp_path):
    with pytest.raises(hm.PromptOverlapError):
        _FakeCtx(_Spec(), object(), 50, ("a", "b"), ("b",), "0" * 64, tmp_path)


@dataclass
class _Pipe:
    transformer: object
    seen: list = field(default_factory=list)


def test_counting_transformer_counts_and_restores():
    import torch

    lin = torch.nn.Linear(8, 4, bias=False)
    pipe = _Pipe(lin)
    with hm.counting_transformer(pipe) as proxy:
        pipe.transformer(torch.zeros(3, 8))
        pipe.transformer(torch.zeros(3, 8))
        assert pipe.transformer.in_features == 8  # attributes pass through
    assert pipe.transformer is lin
    assert proxy.calls == 2 and proxy.flops == 2 * (2 * 3 * 8 * 4)


def test_core_configs_tags():
    ctx = _FakeCtx(_Spec(), object(), 50, ("c",), ("e",), "0" * 64)
    assert hm.FullMethod().configure(ctx).config_tag == "full-K50"
    few = hm.FewerStepsMethod().configure(ctx, 13)
    assert (few.config_tag, few.num_steps, few.is_cache) == ("fewer-steps-K13", 13, False)


def test_a_baseline_that_fails_to_import_stops_the_registry_naming_it(monkeypatch, tmp_path):
    """Issue 14 #6: `--methods all` silently ran none of the baselines when one import failed."""
    import sys

    import baselines
    import baselines.base

    (tmp_path / "broken_probe.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.setattr(baselines, "__path__", [*baselines.__path__, str(tmp_path)])
    monkeypatch.setattr(baselines.base, "_MODULES", (*baselines.base._MODULES, "broken_probe"))
    monkeypatch.delitem(sys.modules, "baselines.broken_probe", raising=False)
    with pytest.raises(hm.BaselineImportError, match=r"baselines\.broken_probe.*boom at import"):
        hm.resolve_methods("all")


def test_a_listed_baseline_module_that_is_missing_is_named(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "baselines.teacache", None)  # import of it now fails
    with pytest.raises(hm.BaselineImportError, match=r"baselines\.teacache"):
        hm.registry()


@pytest.mark.parametrize("model", ["flux-tiny", "dit-tiny", "dit-medium", "wan-tiny", "dit-xl-2-256"])
def test_calibration_and_evaluation_condition_the_model_differently(model):
    """Issue 14 #7: dit-tiny's calibration labels 0-3 were 4 of its 8 evaluation labels."""
    from harness.context import conditioning
    from harness.zoo.registry import get_spec

    spec = get_spec(model)
    evals = spec.evaluation_prompts[:8]
    assert len(evals) == 8
    cal = {conditioning(spec, p) for p in spec.calibration_prompts}
    assert cal and not cal & {conditioning(spec, p) for p in evals}
    hm.check_prompts_disjoint(spec.calibration_prompts, spec.evaluation_prompts, model)


def test_dit_labels_split_and_the_check_compares_labels_not_strings():
    from harness.zoo.digits_data import prompt_split
    from harness.zoo.registry import get_spec

    spec = get_spec("dit-tiny")
    labels = [spec.pipeline_kwargs(p)["class_labels"][0] for p in spec.evaluation_prompts]
    assert labels[:8] == list(range(8)) and set(labels) == set(range(8)) and len(labels) >= 50
    assert {spec.pipeline_kwargs(p)["class_labels"][0] for p in spec.calibration_prompts} == {8, 9}
    old_cal, old_eval = prompt_split()  # what dit used: distinct strings, shared labels
    assert not set(old_cal[:4]) & set(old_eval[:8])
    with pytest.raises(hm.PromptOverlapError, match="class_labels"):
        hm.check_prompts_disjoint(old_cal[:4], old_eval[:8], "dit-tiny")
    hm.check_prompts_disjoint(old_cal[:4], old_eval[:8], "flux-tiny")  # text: the strings differ


@pytest.mark.parametrize(("model", "n"), [("flux-tiny", 40), ("dit-tiny", 40), ("wan-tiny", 12)])
def test_zoo_probe_prompts_are_held_out(model, n):
    from harness.zoo.registry import get_spec, probe_prompts

    spec = get_spec(model)
    probes = probe_prompts(model, n)
    assert len(probes) == n == len(set(probes))
    assert not set(probes) & (set(spec.calibration_prompts) | set(spec.evaluation_prompts))


def test_zoo_training_probes_do_not_read_the_evaluation_prompts():
    import inspect

    from zoo_training import train, train_video

    for fn in (train.adherence_probe, train_video.adherence_probe):
        src = inspect.getsource(fn)
        assert "probe_prompts(" in src and "evaluation_prompts" not in src and "eval_prompts(" not in src


def test_tuned_scores_on_calibration_prompts_only():
    """dpcache-tuned searches on the run's calibration prompts, then the model's next calibration prompts up to
    TUNE_PROMPTS — never an evaluation prompt (refused by name if one slips in)."""
    from types import SimpleNamespace

    from harness.context import PromptOverlapError
    from harness.methods_dpcache import TUNE_PROMPTS, DPCacheTunedMethod
    from harness.zoo.registry import get_spec

    for name, count in (("flux-tiny", TUNE_PROMPTS), ("dit-tiny", TUNE_PROMPTS)):
        spec = get_spec(name)
        run = tuple(spec.calibration_prompts[2:4])
        ctx = SimpleNamespace(calibration_prompts=run, evaluation_prompts=spec.evaluation_prompts, spec=spec)
        prompts = DPCacheTunedMethod.tune_prompts(ctx)
        assert prompts[:2] == list(run) and len(prompts) == len(set(prompts)) == count
        assert set(prompts) <= set(spec.calibration_prompts)
        assert not set(prompts) & set(spec.evaluation_prompts)
    leaked = spec.evaluation_prompts[0]  # a model whose calibration list holds an evaluation prompt
    bad = SimpleNamespace(
        calibration_prompts=(),
        evaluation_prompts=(leaked,),
        spec=SimpleNamespace(calibration_prompts=[leaked], name="x"),
    )
    with pytest.raises(PromptOverlapError):
        DPCacheTunedMethod.tune_prompts(bad)
