"""--shard I/N: every collected test on exactly one shard, loadgroups (and with --shard-by method, a model's
method) never split, the same split every time; the nightly matrix; the cache-directory resolver."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from harness.context import resolve_cache_dir
from harness.sharding import assign, gather, item_group, main, matrix, parse_shard

GROUPS: dict[str, str] = {}  # test id → its xdist loadgroup, from the last _run
pytest_plugins = ["pytester"]


SUITE = """
import pytest

MODELS = {"alpha": 6, "beta": 3, "gamma": 2, "delta": 1}
PARAMS = [
    pytest.param(m, meth, k, id=f"{m}-{meth}-K{k}", marks=pytest.mark.xdist_group(m))
    for m, n in MODELS.items() for meth in ("full", "dpcache", "teacache")[: max(1, n // 2)] for k in range(n)
]


@pytest.mark.parametrize("model,method,budget", PARAMS)
def test_bench(model, method, budget):
    pass


def test_plain_one():
    pass


def test_plain_two():
    pass
"""


def _run(tmp_path: Path, *args: str) -> tuple[int, list[str]]:
    """pytest in this process (collection only) on the fake suite; (exit code, selected test ids)."""
    (tmp_path / "test_fake_suite.py").write_text(SUITE)
    ids: list[str] = []

    class Recorder:
        def pytest_collection_finish(self, session):
            ids.extend(item.nodeid.split("::", 1)[1] for item in session.items)
            GROUPS.clear()
            GROUPS.update({i.nodeid.split("::", 1)[1]: item_group(i) for i in session.items})

    base = ["-p", "harness.sharding", "-p", "no:cacheprovider", "--import-mode=importlib", "-q", "--co"]
    code = pytest.main(
        [*base, "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path), *args], [Recorder()]
    )
    return int(code), ids


def _collect(tmp_path: Path, *args: str) -> list[str]:
    code, ids = _run(tmp_path, *args)
    assert code in (0, 5), code
    return ids


def _model(test_id: str) -> str:
    return test_id.split("[")[1].split("-")[0] if "[" in test_id else "plain"


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_shards_partition_the_tests_and_keep_groups(tmp_path, n):
    everything = _collect(tmp_path)
    assert len(everything) == 6 * 3 + 3 * 1 + 2 * 1 + 1 + 2  # alpha 3 methods × 6, beta/gamma/delta 1 method
    shards = [_collect(tmp_path, "--shard", f"{i}/{n}") for i in range(1, n + 1)]
    assert sorted(t for s in shards for t in s) == sorted(everything)  # each test exactly once
    owner = {}
    for i, shard in enumerate(shards):
        for t in shard:
            assert owner.setdefault(_model(t), i) == i, f"group {_model(t)} split over shards"
    if n > 1:
        assert sum(1 for s in shards if s) == min(n, 5)  # 5 units (4 groups + the plain file) fill n shards
    assert shards == [_collect(tmp_path, "--shard", f"{i}/{n}") for i in range(1, n + 1)]  # deterministic


def test_shard_by_method_splits_a_model_but_not_a_method(tmp_path):
    shards = [_collect(tmp_path, "--shard", f"{i}/3", "--shard-by", "method") for i in (1, 2, 3)]
    where = {}
    for i, shard in enumerate(shards):
        for t in shard:
            key = t.split("[")[1].rsplit("-", 1)[0] if "[" in t else "plain"
            assert where.setdefault(key, i) == i
    alpha = {i for i, s in enumerate(shards) for t in s if "[alpha-" in t}
    assert len(alpha) > 1  # alpha's 18 tests (3 methods) spread; by group they could not be
    assert len(shards[0]) + len(shards[1]) + len(shards[2]) == len(_collect(tmp_path))


def test_shard_by_budget_is_the_loadgroup(tmp_path):
    ids = _collect(tmp_path, "--shard-by", "budget")
    assert GROUPS["test_bench[alpha-dpcache-K3]"] == "alpha_alpha.dpcache.K3"
    assert GROUPS["test_plain_one"] == "test_fake_suite.py"  # no xdist_group: the file
    bench = [t for t in ids if "[" in t]
    assert len({GROUPS[t] for t in bench}) == len(bench)  # every (model, method, budget) its own group
    shards = [_collect(tmp_path, "--shard", f"{i}/4", "--shard-by", "budget") for i in (1, 2, 3, 4)]
    sizes = sorted(len(x) for x in shards)
    assert sum(sizes) == len(ids) and sizes[-1] - sizes[0] <= 2  # 24 one-test units + 1 of two: balanced


def test_gather_reads_the_nights_child_runs(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("dpcache-flux-full", artifact_location=(tmp_path / "art").as_uri())
    other = client.create_experiment("someone-else", artifact_location=(tmp_path / "art2").as_uri())

    def run(exp_id, sha, role="child", tag="dpcache-K13"):
        r = client.create_run(
            exp_id, tags={"dpcache.role": role, "git_sha": sha, "dpcache.invocation": "inv1"}
        )
        client.log_dict(r.info.run_id, {"config_tag": tag, "model": "flux-dev"}, "record.json")
        return r

    run(exp, "abc")
    run(exp, "abc", tag="dpcache-K9")
    run(exp, "abc", role="parent")
    run(exp, "old-sha")
    run(other, "abc")
    out = tmp_path / "night.jsonl"
    assert gather(uri, "abc", 0, out) == 2
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(x["config_tag"] for x in lines) == ["dpcache-K13", "dpcache-K9"]
    assert all(x["invocation"] == "inv1" for x in lines)
    assert gather(uri, "abc", 2**62, out) == 0  # nothing started after that


def test_bad_shard_is_a_usage_error(tmp_path, capsys):
    assert _run(tmp_path, "--shard", "3/2")[0] == pytest.ExitCode.USAGE_ERROR
    assert "1 <= I <= N" in capsys.readouterr().err


def test_parse_and_assign():
    assert parse_shard("2/4") == (2, 4)
    for bad in ("0/3", "4/3", "a/b", "3"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)
    split = assign({"a": 10, "b": 6, "c": 5, "d": 1}, 2)
    assert split == {"a": 0, "b": 1, "c": 1, "d": 0}  # heaviest first, each to the least-loaded: 11 vs 11
    assert assign({"x": 1, "y": 1}, 3) == {"x": 0, "y": 1}


def test_matrix(capsys):
    m = matrix("flux=2 wan=3 dit=1")
    assert m["include"][:3] == [
        {"suite": "flux", "shard": "1/2"},
        {"suite": "flux", "shard": "2/2"},
        {"suite": "wan", "shard": "1/3"},
    ]
    assert len(m["include"]) == 6
    assert matrix("flux=2 wan=3", ["suites/wan"])["include"] == [
        {"suite": "wan", "shard": f"{i}/3"} for i in (1, 2, 3)
    ]
    with pytest.raises(ValueError, match="unknown suite"):
        matrix("flux=2", ["suites/flux; rm -rf /"])
    with pytest.raises(ValueError, match="suite=N"):
        matrix("flux=0")
    assert main(["matrix", "flux=1 dit=2", "--only", "dit"]) == 0
    assert json.loads(capsys.readouterr().out)["include"] == [
        {"suite": "dit", "shard": "1/2"},
        {"suite": "dit", "shard": "2/2"},
    ]


def test_cache_dir_option_then_env_then_checkout(tmp_path, monkeypatch):
    monkeypatch.delenv("DPCACHE_CACHE_DIR", raising=False)
    assert resolve_cache_dir(None, tmp_path) == tmp_path / ".dpcache-cache"
    monkeypatch.setenv("DPCACHE_CACHE_DIR", str(tmp_path / "persistent"))
    assert resolve_cache_dir(None, tmp_path) == tmp_path / "persistent"
    assert resolve_cache_dir(str(tmp_path / "opt"), tmp_path) == tmp_path / "opt"


def test_shard_by_method_spreads_one_model_over_the_workers(pytester: pytest.Pytester):
    """Inside one job: each (model, method) stays on one xdist worker, and a model's methods use every
    worker (with the model as the loadgroup, one worker would run them all)."""
    pytester.makepyfile(
        """
        import os
        import pytest

        @pytest.mark.parametrize(
            "method,budget",
            [pytest.param(m, k, marks=pytest.mark.xdist_group("model-a")) for m in "abcd" for k in (9, 13, 25)],
        )
        def test_bench(method, budget):
            with open(os.path.join(os.environ["OUT_DIR"], f"{method}{budget}"), "w") as f:
                f.write(os.environ.get("PYTEST_XDIST_WORKER", "main"))
        """
    )
    out = pytester.path / "out"
    out.mkdir()
    pytester._monkeypatch.setenv("OUT_DIR", str(out))
    res = pytester.runpytest_subprocess(
        "-p",
        "harness.plugin",
        "-n",
        "2",
        "--dist",
        "loadgroup",
        "--shard-by",
        "method",
        "-p",
        "no:cacheprovider",
    )
    res.assert_outcomes(passed=12)
    by_method: dict[str, set[str]] = {}
    for p in out.iterdir():
        by_method.setdefault(p.name[0], set()).add(p.read_text())
    assert all(len(w) == 1 for w in by_method.values()), by_method
    assert len(set().union(*by_method.values())) == 2, by_method
