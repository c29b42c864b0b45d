"""The shared argument layer (dpcache.cli_args) of `dpcache` and `dpcache-bench`: every combination of values
either runs or is refused on one line before any model loads (property-based, Hypothesis), never a traceback;
`--device`; output paths; SIGINT."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpcache import cli_args as ca
from dpcache.errors import OutputPathError, UsageError

FLUX_TINY = str(Path(__file__).parents[1] / "harness" / "zoo" / "tiny" / "flux-tiny")
PROPERTY = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


class Reached(Exception):
    """Raised by the patched model loader: the arguments were accepted."""


@pytest.fixture
def no_loading(monkeypatch):
    """Model loading (dpcache and harness) raises Reached; torch's thread count is restored afterwards."""
    import torch

    import dpcache.cli_pipeline as cp
    import harness.runner
    import harness.zoo.registry as reg

    def reached(*a, **k):
        raise Reached

    monkeypatch.setattr(cp, "load_pipeline", reached)
    monkeypatch.setattr(reg, "load_pipeline", reached)
    monkeypatch.setattr(harness.runner, "run_benchmark", reached)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _refused_on_one_line(err: str, prog: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith(prog) and ": error: " in lines[0], err


def _opt(flag: str, value) -> list[str]:
    return [] if value is None else [f"{flag}={value}"]  # "=" form: argparse reads "-inf" as a flag otherwise


ints = st.one_of(st.none(), st.integers(-3, 12), st.integers(-(10**12), 10**12))
sizes = st.one_of(st.none(), st.integers(-2, 64), st.sampled_from([65536, 10**9]))
floats = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.just(float("nan")))
devices = st.sampled_from(["cpu", "auto", "cuda", "mps", "tpu", "cuda:3"])


@PROPERTY
@given(
    command=st.sampled_from(["generate", "calibrate"]),
    steps=ints,
    order=ints,
    first=ints,
    last=ints,
    seed=ints,
    height=sizes,
    width=sizes,
    guidance=floats,
    budget=ints,
    sample=ints,
    device=devices,
    set_height=st.one_of(st.none(), st.sampled_from(["16", "abc", "-1", "1e9", "[1]", "true", "65536"])),
    out=st.sampled_from(["file", "dir", "under-a-file"]),
)
def test_dpcache_pipeline_args_run_or_are_refused_before_loading(
    no_loading,
    tmp_path,
    capsys,
    command,
    steps,
    order,
    first,
    last,
    seed,
    height,
    width,
    guidance,
    budget,
    sample,
    device,
    set_height,
    out,
):
    from dpcache.cli import main

    capsys.readouterr()  # one example's output at a time
    outs = {"file": tmp_path / "o.png", "dir": tmp_path, "under-a-file": Path(__file__) / "x.png"}
    argv = [command, "--pipeline", FLUX_TINY, "--device", device, "--out", str(outs[out])]
    argv += _opt("--steps", steps) + _opt("--order", order) + _opt("--first-full", first)
    argv += _opt("--last-full", last) + _opt("--seed", seed)
    argv += [] if set_height is None else ["--set", f"height={set_height}"]
    if command == "generate":
        argv += ["--prompt", "a red 1", "--no-cache", *_opt("--height", height), *_opt("--width", width)]
        argv += _opt("--guidance", guidance)
    else:
        argv += ["--prompts", "drawbench", *_opt("--sample-size", sample)]
        if out == "file":
            argv[argv.index("--out") + 1] = str(tmp_path / "c.safetensors")
    try:
        rc = main(argv)
    except Reached:  # accepted: then every value is within the bounds
        t = 50 if steps is None else steps
        assert 1 <= t <= ca.MAX_STEPS and out == "file" and device in ("cpu", "auto")
        assert (seed is None or seed >= 0) and (order is None or 0 <= order <= ca.MAX_ORDER)
        assert set_height in (None, "16")
        if command == "generate":
            assert all(v is None or 1 <= v <= ca.MAX_SIDE for v in (height, width))
            assert guidance is None or math.isfinite(guidance)
        return
    assert rc == 2
    _refused_on_one_line(capsys.readouterr().err, "dpcache")


@PROPERTY
@given(
    steps=ints,
    num_prompts=ints,
    calibration=ints,
    repeats=ints,
    threads=ints,
    budgets=st.sampled_from(["4", "2,4", "0", "-1", "x", "100", "4,,3"]),
    device=devices,
    model=st.sampled_from(["flux-tiny", "dit-tiny", "nope"]),
    json_out=st.sampled_from(["file", "dir", "under-a-file"]),
    report=st.sampled_from([None, "dir", "file"]),
)
def test_bench_run_args_run_or_are_refused_before_loading(
    no_loading,
    tmp_path,
    capsys,
    steps,
    num_prompts,
    calibration,
    repeats,
    threads,
    budgets,
    device,
    model,
    json_out,
    report,
):
    from harness.cli import main

    capsys.readouterr()
    paths = {"file": tmp_path / "r.jsonl", "dir": tmp_path, "under-a-file": Path(__file__) / "r.jsonl"}
    argv = ["run", "--model", model, "--methods", "full,dpcache", "--budgets", budgets, "--device", device]
    argv += ["--json-out", str(paths[json_out]), "--mlflow-uri", "off", "--cache-dir", str(tmp_path / "c")]
    argv += _opt("--steps", steps) + _opt("--num-prompts", num_prompts)
    argv += (
        _opt("--calibration-prompts", calibration) + _opt("--repeats", repeats) + _opt("--threads", threads)
    )
    if report is not None:
        argv += ["--report", str(tmp_path / "rep" if report == "dir" else Path(__file__))]
    try:
        rc = main(argv)
    except Reached:
        from harness.zoo.registry import get_spec

        spec = get_spec(model)
        n = 8 if num_prompts is None else num_prompts
        c = 4 if calibration is None else calibration
        assert 1 <= n <= len(spec.evaluation_prompts) and 1 <= c <= len(spec.calibration_prompts)
        assert steps is None or 1 <= steps <= ca.MAX_STEPS
        assert threads is None or threads >= 1
        assert json_out == "file" and report != "file" and device in ("cpu", "auto")
        return
    assert rc == 2
    _refused_on_one_line(capsys.readouterr().err, "dpcache-bench")


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--threads", "0"], "--threads must be >= 1"),  # was silently turned into 1
        (["--threads", "-2"], "--threads must be >= 1"),  # was a traceback
        (["--calibration-prompts", "0"], "--calibration-prompts must be >= 1"),
        (["--calibration-prompts", "1000"], "flux-tiny has 32 calibration prompts"),  # was silently capped
        (
            ["--num-prompts", "1000000"],
            "flux-tiny has 64 evaluation prompts",
        ),  # was a traceback after loading
        (["--steps", "100000000"], "--steps must be >= 1 and <= 1000"),  # was OOM-killed after 178 s
        (["--steps", "900", "--budgets", "9"], "needs about"),  # cost tensor memory estimate
        (["--device", "tpu"], "--device must be one of"),
    ],
)
def test_bench_run_refusals_name_the_problem(no_loading, capsys, tmp_path, argv, fragment):
    from harness.cli import main

    base = ["run", "--model", "flux-tiny", "--json-out", str(tmp_path / "r.jsonl"), "--mlflow-uri", "off"]
    assert main(base + argv) == 2
    err = capsys.readouterr().err
    _refused_on_one_line(err, "dpcache-bench")
    assert fragment in err


def test_bench_run_device_reaches_the_pipeline_and_generators(monkeypatch, tmp_path):
    """Issue 14 #9: `dpcache-bench run --device`; the pipeline and the generators go there (cpu here)."""
    import torch

    import harness.runner
    from harness.cli import main

    seen = {}

    def fake_run(model, methods, budgets, steps, num_prompts, **kw):
        seen.update(kw)
        return []

    monkeypatch.setattr(harness.runner, "run_benchmark", fake_run)
    threads = torch.get_num_threads()
    try:
        argv = ["run", "--model", "flux-tiny", "--methods", "full", "--steps", "4", "--budgets", "4"]
        argv += ["--json-out", str(tmp_path / "r.jsonl"), "--mlflow-uri", "off", "--repeats", "0"]
        assert main([*argv, "--device", "cpu"]) == 0 and seen["device"] == "cpu"
        assert main([*argv, "--device", "auto"]) == 0
        assert seen["device"] == ("cuda" if torch.cuda.is_available() else ca.resolve_device("auto"))
    finally:
        torch.set_num_threads(threads)


def test_model_context_samples_with_a_generator_on_its_device():
    from types import SimpleNamespace

    from harness.context import ModelContext

    seen = {}

    def pipe(**kw):
        seen["generator"] = kw["generator"]
        return SimpleNamespace(images=[[[0.0]]])

    spec = SimpleNamespace(name="fake", family="flux", pipeline_kwargs=lambda p, s=None: {"prompt": p})
    ctx = ModelContext(spec, pipe, 4, ("a",), ("b",), "w", device="cpu")
    ctx.call("b", 3)
    assert seen["generator"].device.type == "cpu" and seen["generator"].initial_seed() == 3


def test_output_paths_are_checked(tmp_path):
    f = tmp_path / "f.txt"
    f.write_text("x")
    assert ca.check_output_file("--json-out", tmp_path / "new" / "r.jsonl") == tmp_path / "new" / "r.jsonl"
    with pytest.raises(OutputPathError, match=r"--json-out .* is a directory"):
        ca.check_output_file("--json-out", tmp_path)
    with pytest.raises(OutputPathError, match="is a file, not a directory"):
        ca.check_output_file("--json-out", f / "r.jsonl")
    with pytest.raises(OutputPathError, match=r"--report .* is an existing file"):
        ca.check_output_dir("--report", f)
    assert ca.check_output_dir("--report", tmp_path / "a" / "b") == tmp_path / "a" / "b"


def test_bounds_and_memory_estimates():
    assert ca.model_step_limit(FLUX_TINY) <= ca.MAX_STEPS
    with pytest.raises(UsageError, match="needs about"):
        ca.check_memory("x", ca.available_memory() * 2.0)
    with pytest.raises(UsageError, match="height must be >= 1 and <= 8192"):
        ca.check_sample_size(65536, 65536)
    with pytest.raises(UsageError, match="needs about"):
        ca.check_sample_size(8192, 8192, ca.MAX_FRAMES)
    assert ca.cost_tensor_bytes(50, 4) == 8 * 50 * 51**2 * 5


def test_sigint_is_one_line_and_exit_130(capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    assert ca.run_main("dpcache", interrupted, argparse.Namespace()) == 130
    err = capsys.readouterr().err
    assert err.strip() == "dpcache: interrupted"


def test_parser_errors_are_one_line(capsys):
    from dpcache.cli import main

    assert main(["plan", "--cost", "x", "--budget", "3", "--steps", "abc"]) == 2
    _refused_on_one_line(capsys.readouterr().err, "dpcache")
