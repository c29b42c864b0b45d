"""Fast tests of the tiny video zoo: wan-tiny and hunyuan-video-tiny load, run, reproduce and round-trip."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from harness.zoo import hunyuan_tiny, video_data, wan_tiny  # noqa: E402

MODULES = {"wan-tiny": wan_tiny, "hunyuan-video-tiny": hunyuan_tiny}
CLASSES = {"wan-tiny": "WanPipeline", "hunyuan-video-tiny": "HunyuanVideoPipeline"}
PROMPT = "a green 4 moving left"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread; more threads thrash on a shared 2-core runner."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module", params=sorted(MODULES))
def tiny(request):
    name = request.param
    mod = MODULES[name]
    assert (mod.TINY_DIR / "model_index.json").exists(), (
        f"{mod.TINY_DIR} missing: python -m harness.zoo.train {name}"
    )
    pipe = mod.build_pipeline(trained=True)
    pipe.set_progress_bar_config(disable=True)
    return name, mod, pipe


def _run(pipe, mod, seed: int = 0, steps: int = 4, **over):
    kw = {**mod.default_call_kwargs(), "num_inference_steps": steps, **over}
    return pipe(prompt=PROMPT, generator=torch.Generator().manual_seed(seed), **kw).frames


def test_loads_real_pipeline_class_and_small_on_disk(tiny):
    name, mod, pipe = tiny
    assert type(pipe).__name__ == CLASSES[name]
    size = sum(p.stat().st_size for p in mod.TINY_DIR.rglob("*") if p.is_file())
    assert size < 5 * 2**20, size
    assert list(mod.TINY_DIR.rglob("*.safetensors")) and not list(mod.TINY_DIR.rglob("*.bin"))


def test_full_steps_shape_range_and_determinism(tiny):
    _, mod, pipe = tiny
    kw = mod.default_call_kwargs()
    assert kw["num_inference_steps"] == 50
    a = _run(pipe, mod, steps=50)
    assert a.shape == (1, kw["num_frames"], 3, kw["height"], kw["width"])
    assert torch.isfinite(a).all() and a.min() >= 0 and a.max() <= 1
    assert a.std() > 0.01  # a picture, not a flat frame
    b = _run(pipe, mod, steps=50)
    assert torch.equal(a, b)


def test_other_seed_differs(tiny):
    _, mod, pipe = tiny
    assert not torch.equal(_run(pipe, mod, seed=0), _run(pipe, mod, seed=1))


def test_cfg_runs_two_forwards_per_step(tiny):
    _, mod, pipe = tiny
    calls = []
    h = pipe.transformer.register_forward_hook(lambda *a: calls.append(1))
    try:
        _run(pipe, mod, steps=3)
    finally:
        h.remove()
    assert len(calls) == 6


def test_save_pretrained_round_trip(tiny, tmp_path):
    _, mod, pipe = tiny
    pipe.save_pretrained(str(tmp_path), safe_serialization=True)
    again = mod.build_pipeline(trained=True, path=tmp_path)
    again.set_progress_bar_config(disable=True)
    assert type(again) is type(pipe)
    assert torch.equal(_run(pipe, mod), _run(again, mod))


def test_hunyuan_template_crops_to_the_prompt():
    pipe = hunyuan_tiny.build_pipeline(trained=False)
    kw = hunyuan_tiny.default_call_kwargs(tokenizer=pipe.tokenizer)
    emb, pooled, mask = pipe.encode_prompt(
        PROMPT, prompt_template=kw["prompt_template"], max_sequence_length=kw["max_sequence_length"]
    )
    assert int(mask.sum()) == len(PROMPT.split())  # no template junk, no all-padding
    assert pipe.tokenizer.padding_side == "right"
    ids = pipe.tokenizer_2(PROMPT).input_ids
    assert ids[-1] == pipe.text_encoder_2.config.eos_token_id
    assert len(pipe.tokenizer(PROMPT, add_special_tokens=False).input_ids) == 5


def test_random_tiny_builders_run():
    for mod in MODULES.values():
        pipe = mod.build_pipeline(seed=0, trained=False)
        pipe.set_progress_bar_config(disable=True)
        out = _run(pipe, mod, steps=2)
        assert out.shape[1:] == (9, 3, 32, 32)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_medium_spec_builds(name):
    mod = MODULES[name]
    pipe = mod.build_pipeline(seed=0, trained=False, size="medium")
    n = sum(p.numel() for p in pipe.transformer.parameters())
    assert n > 10_000_000
    kw = mod.default_call_kwargs("medium")
    assert (kw["num_frames"] - 1) % 4 == 0 and kw["height"] % 8 == 0


def test_clips_and_prompts():
    g = torch.Generator().manual_seed(0)
    clips, prompts = video_data.sample_batch(g, 3)
    assert clips.shape == (3, 3, video_data.NUM_FRAMES, 32, 32)
    assert clips.min() >= -1 and clips.max() <= 1
    for p in prompts:
        assert video_data.make_prompt(*video_data.parse_prompt(p)) == p
    assert len(set(video_data.all_prompts())) == 200
    assert set(video_data.eval_prompts(20)) <= set(video_data.all_prompts())
