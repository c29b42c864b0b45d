"""Reference store: keys, weights hashes, atomic writes, parallel get_or_compute, drift detection."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from harness.references import ReferenceDriftError, ReferenceStore, reference_key, weights_hash

ROOT = Path(__file__).resolve().parents[1]

BASE = dict(
    model_id="flux-tiny",
    weights_hash="abc",
    pipeline_class="FluxPipeline",
    scheduler_config={
        "_class_name": "FlowMatchEulerDiscreteScheduler",
        "shift": 3.0,
        "_diffusers_version": "0.42.1",
    },
    num_steps=50,
    height=32,
    width=32,
    guidance=3.5,
    dtype=torch.float32,
    prompt="a red digit",
    seed=0,
    device="cpu",
    call_kwargs={"max_sequence_length": 16, "negative_prompt": ""},
)


def test_key_is_deterministic_and_sensitive_to_every_field():
    k = reference_key(**BASE)
    assert len(k) == 64 and k == reference_key(**dict(reversed(list(BASE.items()))))
    changes = dict(
        model_id="wan-tiny",
        weights_hash="abd",
        pipeline_class="WanPipeline",
        num_steps=49,
        height=64,
        width=16,
        guidance=4.0,
        dtype=torch.bfloat16,
        prompt="a blue digit",
        seed=1,
        frames=5,
        scheduler_config={"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 1.0},
        device="cuda-nvidia-a100",
        call_kwargs={"max_sequence_length": 32, "negative_prompt": ""},
    )
    keys = {reference_key(**{**BASE, f: v}) for f, v in changes.items()}
    assert k not in keys and len(keys) == len(changes)


def test_key_ignores_bookkeeping_and_spelling():
    other = {
        **BASE,
        "scheduler_config": {"shift": 3, "_class_name": "FlowMatchEulerDiscreteScheduler"},
        "guidance": 3.5,
    }
    assert reference_key(**other) == reference_key(**BASE)


def test_key_hashes_images_and_tensors_by_content():
    """An I2V conditioning image or a tensor argument enters the key by content: `str()` of a PIL image names
    its memory address (a new key every run) and of a large tensor elides values (two inputs, one key)."""
    from PIL import Image

    img = Image.new("RGB", (8, 8), (10, 20, 30))
    same = Image.new("RGB", (8, 8), (10, 20, 30))
    other = Image.new("RGB", (8, 8), (10, 20, 31))
    key = lambda v: reference_key(**{**BASE, "call_kwargs": {"image": v}})  # noqa: E731
    assert key(img) == key(same) != key(other)
    t = torch.zeros(2000)
    t2 = t.clone()
    t2[1000] = 1.0
    assert str(t) == str(t2) and key(t) != key(t2) and key(t) == key(t.clone())


def test_key_requires_fields():
    with pytest.raises(TypeError, match="missing fields"):
        reference_key(model_id="x", prompt="p", seed=0)


def test_weights_hash_module_and_dir(tmp_path):
    torch.manual_seed(0)
    a = torch.nn.Linear(4, 3)
    b = torch.nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    assert weights_hash(a) == weights_hash(b)
    with torch.no_grad():
        b.bias[0] += 1e-6
    assert weights_hash(a) != weights_hash(b)
    assert weights_hash(a.to(torch.bfloat16)) != weights_hash(b)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "model.safetensors").write_bytes(b"123")
    (tmp_path / "config.json").write_text("{}")
    h1 = weights_hash(tmp_path)
    (tmp_path / "sub" / "model.safetensors").write_bytes(b"124")
    assert weights_hash(tmp_path) != h1 and weights_hash(str(tmp_path / "config.json"))


def test_put_get_roundtrip_meta_and_sidecar(tmp_path):
    store = ReferenceStore(tmp_path)
    key = reference_key(**BASE)
    assert store.get(key) is None and key not in store
    x = torch.rand(2, 3, 8, 8)
    store.put(key, x, {"prompt": "a red digit", "seed": 0})
    assert torch.equal(store.get(key), x) and key in store and store.keys() == [key]
    assert store.meta(key)["prompt"] == "a red digit"
    assert (tmp_path / f"{key}.json").is_file()
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_crash_between_temp_write_and_rename_leaves_no_partial_file(tmp_path):
    """A writer killed after writing its temp file but before the rename: the store keeps the old value."""
    store = ReferenceStore(tmp_path)
    store.put("k1", torch.zeros(4), {"v": "old"})
    script = textwrap.dedent(f"""
        import os, sys, torch
        sys.path.insert(0, {str(ROOT)!r})
        from harness.references import ReferenceStore
        real = os.replace
        def crash(src, dst):
            if str(dst).endswith('.safetensors'):
                os._exit(9)  # killed half way: temp written, never renamed
            real(src, dst)
        os.replace = crash
        s = ReferenceStore({str(tmp_path)!r})
        s.put('k1', torch.ones(4), {{'v': 'new'}})
        s.put('k2', torch.ones(4), {{'v': 'new'}})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    assert torch.equal(store.get("k1"), torch.zeros(4)) and store.meta("k1")["v"] == "old"
    assert store.get("k2") is None and not (tmp_path / "k2.safetensors").exists()
    assert store.keys() == ["k1"]  # the orphaned temp file is invisible to readers


def test_failed_write_in_process_cleans_temp(tmp_path, monkeypatch):
    store = ReferenceStore(tmp_path)

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        store.put("k", torch.ones(2), {})
    monkeypatch.undo()
    assert store.get("k") is None and list(tmp_path.iterdir()) == []


def _others_at_the_lock(signals: Path, me: int) -> list[str]:
    return [p.name for p in signals.iterdir() if p.name.startswith("lock-") and p.name != f"lock-{me}"]


def _worker(root: str, key: str, signals: str, q) -> None:
    """get_or_compute from its own process. Reaching for the key's lock leaves `lock-<pid>`; the computing
    one leaves `computed-<pid>` and returns only once the other process has reached for the lock too, so
    the two always overlap: the other has found the key missing and must wait on the lock, then reuse."""
    store, sig, me = ReferenceStore(root), Path(signals), os.getpid()
    real_lock = store.lock

    def lock(k: str):
        (sig / f"lock-{me}").touch()
        return real_lock(k)

    store.lock = lock

    def compute():
        (sig / f"computed-{me}").touch()
        end = time.monotonic() + 120
        while not _others_at_the_lock(sig, me):
            if time.monotonic() > end:
                raise TimeoutError("the other process never reached for the lock while this one computed")
            time.sleep(0.01)
        return torch.full((3,), float(me))

    q.put((me, store.get_or_compute(key, compute, {"who": me}).tolist()))


def test_parallel_get_or_compute_computes_once(tmp_path):
    """Two processes ask for one missing key at the same time: one computes, the other waits and reuses."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    signals = tmp_path / "signals"
    signals.mkdir()
    procs = [
        ctx.Process(target=_worker, args=(str(tmp_path / "refs"), "shared", str(signals), q))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    results = dict(q.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    pids = {p.pid for p in procs}
    assert {f.name for f in signals.iterdir() if f.name.startswith("lock-")} == {f"lock-{p}" for p in pids}
    computed = [int(f.name.split("-")[1]) for f in signals.iterdir() if f.name.startswith("computed-")]
    assert len(computed) == 1 and computed[0] in pids  # one computed, the other waited on the lock
    assert set(results) == pids and all(r == [float(computed[0])] * 3 for r in results.values())


def test_get_or_compute_reuses_and_refreshes(tmp_path):
    store = ReferenceStore(tmp_path)
    calls = []
    first = store.get_or_compute("k", lambda: calls.append(1) or torch.ones(2), {})
    again = store.get_or_compute("k", lambda: calls.append(1) or torch.zeros(2), {})
    assert calls == [1] and torch.equal(first, again)
    fresh = store.get_or_compute("k", lambda: torch.zeros(2), {}, refresh=True)
    assert torch.equal(fresh, torch.zeros(2)) and torch.equal(store.get("k"), torch.zeros(2))


def test_check_drift(tmp_path):
    store = ReferenceStore(tmp_path)
    torch.manual_seed(0)
    ref = torch.rand(1, 3, 16, 16)
    key = reference_key(**BASE)
    store.put(key, ref, {})
    assert store.check_drift(key, ref.clone()) == 100.0
    assert store.check_drift(key, ref + 1e-4) > 40
    with pytest.raises(
        ReferenceDriftError,
        match=rf"reference drift for key {key}: PSNR to the stored reference is \d+\.\d\d dB",
    ):
        store.check_drift(key, (ref + 0.2).clamp(0, 1))
    with pytest.raises(ReferenceDriftError, match=r"reference drift.*shape"):
        store.check_drift(key, ref[:, :1])
    with pytest.raises(ReferenceDriftError, match="no stored reference"):
        store.check_drift("missing", ref)


def test_refresh_store_recomputes_each_key_once(tmp_path):
    ReferenceStore(tmp_path).put("k", torch.zeros(2), {})
    store = ReferenceStore(tmp_path, refresh=True)
    calls = []
    out = store.get_or_compute("k", lambda: calls.append(1) or torch.ones(2), {})
    again = store.get_or_compute("k", lambda: calls.append(1) or torch.full((2,), 5.0), {})
    assert calls == [1] and torch.equal(out, torch.ones(2)) and torch.equal(again, torch.ones(2))


def test_cached_artefact_names_change_with_every_setting_that_changes_their_content():
    """Cost tensors, budget searches and tuned settings are cached under `ModelContext.key`: a change of the
    call arguments, calibration prompts, scheduler, dtype or device class names a new artefact (a stale one
    made under other settings is never reused); the same settings name the same artefact."""
    from types import SimpleNamespace

    from harness.context import ModelContext

    def ctx(extra=None, device="cpu", prompts=("a",), shift=3.0, dtype=torch.float32):
        spec = SimpleNamespace(
            name="fake",
            family="flux",
            pipeline_kwargs=lambda p, s=None: {"prompt": p, "height": 32, **(extra or {})},
        )
        sched = SimpleNamespace(config={"shift": shift, "_diffusers_version": "0"})
        pipe = SimpleNamespace(
            scheduler=sched,
            transformer=SimpleNamespace(parameters=lambda: iter([torch.zeros(1, dtype=dtype)])),
        )
        return ModelContext(spec, pipe, 4, prompts, ("b",), "w" * 12, device=device)

    base = ctx().key("taylor", "o2")
    assert base == ctx().key("taylor", "o2")
    others = [
        ctx({"max_sequence_length": 32}),
        ctx({"height": 16}),
        ctx(device="cuda"),
        ctx(prompts=("a", "c")),
        ctx(shift=1.0),
        ctx(dtype=torch.bfloat16),
    ]
    keys = {c.key("taylor", "o2") for c in others}
    assert base not in keys and len(keys) == len(others)
