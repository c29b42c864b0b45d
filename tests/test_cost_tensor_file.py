"""Cost-tensor file tests: safetensors round trip, atomic writes, metadata checks, pickle safety."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from dpcache.convert import convert, load_npy, load_released_pickle, merge_finite_mean
from dpcache.cost_tensor import CostTensor, CostTensorMeta
from dpcache.errors import CostTensorError, CostTensorMismatchError

DATA = Path(__file__).parent / "data" / "official"
SHIPPED = Path(__file__).parents[1] / "dpcache" / "data" / "official"


def small_cost(num_steps: int = 4, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    arr = rng.random((num_steps, num_steps + 1, num_steps + 1))
    arr[rng.random(arr.shape) > 0.6] = np.inf
    return arr


class Boom:
    """Pickles to a call of os.system; must never be executed by the restricted unpickler."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_round_trip(tmp_path):
    arr = small_cost()
    tensor = CostTensor.from_array(
        arr, model_id="m/x", prompt_hashes=["ab", "cd"], seeds=[42, 43], dtype="float16", sentinel_alpha=0.75
    )
    out = tensor.save(tmp_path / "c.safetensors")
    back = CostTensor.load(out)
    assert np.array_equal(back.cost, arr) and back.cost.dtype == np.float64
    assert back.meta == tensor.meta
    assert back.meta.seeds == [42, 43] and back.meta.prompt_hashes == ["ab", "cd"]
    assert back.meta.num_steps == 4 and back.meta.max_jump == 1 and back.meta.format_version == 1


def test_float32_is_upcast():
    tensor = CostTensor.from_array(small_cost().astype(np.float32))
    assert tensor.cost.dtype == np.float64


def test_atomic_write_leaves_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "c.safetensors"
    CostTensor.from_array(small_cost(seed=1)).save(target)
    assert os.listdir(tmp_path) == ["c.safetensors"]

    import safetensors.numpy

    def broken(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        CostTensor.from_array(small_cost(seed=2)).save(target)
    assert os.listdir(tmp_path) == ["c.safetensors"]
    assert np.array_equal(CostTensor.load(target).cost, small_cost(seed=1))  # old file intact


def test_mismatch_names_every_field():
    tensor = CostTensor.from_array(small_cost(), model_id="a/b", predictor="taylor", predictor_order=2)
    tensor.check_compatible(
        num_steps=4, predictor="taylor", predictor_order=2, model_id="a/b", first_full_steps=3
    )
    with pytest.raises(CostTensorMismatchError) as err:
        tensor.check_compatible(num_steps=50, predictor="taylor", predictor_order=1, model_id="c/d")
    msg = str(err.value)
    assert "num_steps: expected 50, found 4" in msg
    assert "predictor_order: expected 1, found 2" in msg
    assert "model_id: expected 'c/d', found 'a/b'" in msg
    assert "predictor:" not in msg and "\n" not in msg


@pytest.mark.parametrize(
    ("arr", "match"),
    [
        (np.full((3, 4, 4), np.nan), "NaN"),
        (np.zeros((3, 4, 5)), "shape"),
        (np.zeros((3, 4, 4), dtype=complex), "real numbers"),
        (np.array([[[-np.inf]]] * 1).repeat(2, 1).repeat(2, 2), "-inf"),
        ([[[0.0]]], "numpy array"),
    ],
)
def test_invalid_arrays_rejected(arr, match):
    with pytest.raises(CostTensorError, match=match):
        CostTensor.from_array(arr)


def test_meta_must_match_shape_and_fields():
    with pytest.raises(CostTensorError, match="T=5"):
        CostTensor.from_array(small_cost(), num_steps=5)
    with pytest.raises(CostTensorError, match="colour"):
        CostTensor.from_array(small_cost(), colour="red")


def test_meta_strings_round_trip():
    meta = CostTensorMeta(num_steps=10, seeds=[1, 2], prompt_hashes=["x"])
    assert CostTensorMeta.from_strings(meta.to_strings()) == meta
    with pytest.raises(CostTensorError, match="seeds"):
        CostTensorMeta.from_strings({**meta.to_strings(), "seeds": "nope"})


def test_load_refuses_pickle_npy_and_garbage(tmp_path):
    pkl = tmp_path / "cost.safetensors"
    pkl.write_bytes(pickle.dumps(small_cost()))
    with pytest.raises(CostTensorError, match="is a pickle; convert it with `dpcache convert"):
        CostTensor.load(pkl)
    npy = tmp_path / "cost.npy"
    np.save(npy, small_cost())
    with pytest.raises(CostTensorError, match=r"\.npy array; convert"):
        CostTensor.load(npy)
    junk = tmp_path / "junk.safetensors"
    junk.write_text("hello, this is not a tensor file at all")
    with pytest.raises(CostTensorError, match="not a safetensors cost tensor"):
        CostTensor.load(junk)
    with pytest.raises(FileNotFoundError):
        CostTensor.load(tmp_path / "missing.safetensors")


def test_load_refuses_other_safetensors(tmp_path):
    from safetensors.numpy import save_file

    other = tmp_path / "weights.safetensors"
    save_file({"weight": np.zeros((2, 2))}, str(other))
    with pytest.raises(CostTensorError, match="no tensor named 'cost'"):
        CostTensor.load(other)
    bare = tmp_path / "bare.safetensors"
    save_file({"cost": small_cost()}, str(bare))
    with pytest.raises(CostTensorError, match="no cost tensor metadata"):
        CostTensor.load(bare)
    newer = tmp_path / "newer.safetensors"
    save_file({"cost": small_cost()}, str(newer), metadata={"num_steps": "4", "format_version": "99"})
    with pytest.raises(CostTensorError, match="upgrade dpcache"):
        CostTensor.load(newer)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_restricted_unpickler_loads_bare_ndarray(tmp_path, protocol):
    arr = small_cost()
    src = tmp_path / "c.pkl"
    src.write_bytes(pickle.dumps(arr.astype(np.float32), protocol=protocol))
    got = load_released_pickle(src)
    assert got.dtype == np.float64 and np.array_equal(got, arr.astype(np.float32).astype(np.float64))


def test_concatenated_pickles_are_averaged_over_finite_cells(tmp_path):
    a, b = np.full((2, 3, 3), np.inf), np.full((2, 3, 3), np.inf)
    a[0, 0, 1], b[0, 0, 1] = 1.0, 3.0
    a[1, 1, 2] = 5.0
    src = tmp_path / "c.pkl"
    with open(src, "ab") as fh:  # as the released calibration writes them
        pickle.dump(a, fh)
        pickle.dump(b, fh)
    got = load_released_pickle(src)
    assert got[0, 0, 1] == 2.0 and got[1, 1, 2] == 5.0 and np.isinf(got[1, 0, 0])
    assert np.array_equal(got, merge_finite_mean([a, b]))


@pytest.mark.parametrize(
    "payload",
    [
        lambda marker: Boom(marker),
        lambda marker: [small_cost(), Boom(marker)],
        lambda marker: {"cost": small_cost()},
        lambda marker: np.array([1, "x"], dtype=object),
    ],
    ids=["os.system", "nested", "dict", "object-array"],
)
def test_restricted_unpickler_refuses_everything_else(tmp_path, payload):
    marker = tmp_path / "pwned"
    src = tmp_path / "evil.pkl"
    src.write_bytes(pickle.dumps(payload(marker)))
    with pytest.raises(CostTensorError):
        load_released_pickle(src)
    assert not marker.exists()


def test_malicious_pickle_names_refused_global(tmp_path):
    marker = tmp_path / "pwned"
    src = tmp_path / "evil.pkl"
    src.write_bytes(pickle.dumps(small_cost()) + pickle.dumps(Boom(marker)))
    with pytest.raises(CostTensorError, match=r"refused global (posix|os)\.system"):
        load_released_pickle(src)
    assert not marker.exists()


def test_load_npy_never_unpickles(tmp_path):
    src = tmp_path / "obj.npy"
    np.save(src, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(CostTensorError, match=r"not a plain \.npy"):
        load_npy(src)


@pytest.mark.parametrize("suffix", [".pkl", ".npy"])
def test_convert(tmp_path, suffix):
    arr = small_cost()
    src = tmp_path / f"raw{suffix}"
    if suffix == ".npy":
        np.save(src, arr)
    else:
        src.write_bytes(pickle.dumps(arr))
    out = tmp_path / "c.safetensors"
    convert(src, out, model_id="m/x", first_full_steps=2)
    back = CostTensor.load(out)
    assert np.array_equal(back.cost, arr)
    assert back.meta.source == f"converted:raw{suffix}" and back.meta.first_full_steps == 2
    with pytest.raises(CostTensorError, match="--steps"):
        convert(src, out, num_steps=50)


@pytest.mark.parametrize(
    ("name", "model_id", "first", "last"),
    [
        ("flux_dev_T50_cost", "black-forest-labs/FLUX.1-dev", 3, 0),
        ("wan21_i2v_T50_cost", "Wan-AI/Wan2.1-I2V-14B-720P-Diffusers", 4, 1),
    ],
)
def test_shipped_official_tensors(name, model_id, first, last):
    tensor = CostTensor.load(SHIPPED / f"{name}.safetensors")
    assert np.array_equal(tensor.cost, np.load(DATA / f"{name}.npy"))
    tensor.check_compatible(
        num_steps=50, predictor="taylor", predictor_order=2, model_id=model_id, first_full_steps=first
    )
    assert tensor.meta.last_full_steps == last and tensor.meta.cost_metric == "l1"
    assert tensor.meta.source == f"converted:{name}.npy"
