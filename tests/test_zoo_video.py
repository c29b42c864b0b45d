"""Fast tests of the tiny video zoo: wan-tiny, wan-i2v-tiny and hunyuan-video-tiny load, run, reproduce and
round-trip."""

from __future__ import annotations

import json

import pytest
import torch  # torch and diffusers are core dependencies: a missing one is an error, not a skip

from harness.zoo import hunyuan_tiny, video_data, wan_i2v_tiny, wan_tiny

MODULES = {"wan-tiny": wan_tiny, "wan-i2v-tiny": wan_i2v_tiny, "hunyuan-video-tiny": hunyuan_tiny}
CLASSES = {
    "wan-tiny": "WanPipeline",
    "wan-i2v-tiny": "WanImageToVideoPipeline",
    "hunyuan-video-tiny": "HunyuanVideoPipeline",
}
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
        f"{mod.TINY_DIR} missing: python -m zoo_training.train {name}"
    )
    pipe = mod.build_pipeline(trained=True)
    pipe.set_progress_bar_config(disable=True)
    return name, mod, pipe


def _run(pipe, mod, seed: int = 0, steps: int = 4, **over):
    kw = {**mod.default_call_kwargs(), "num_inference_steps": steps, **over}
    if hasattr(mod, "first_frame"):  # image-to-video: the prompt's first frame
        kw.setdefault("image", mod.first_frame(PROMPT))
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
    _emb, _pooled, mask = pipe.encode_prompt(
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


def test_video_checks_read_real_clips():
    """The adherence checks read the digit, colour and direction of rendered clips (their ceiling),
    and a clip's reading changes when the clip shows another digit or moves the other way."""
    from harness.zoo.classifier import video_adherence as adherence

    prompts = video_data.eval_prompts(20)
    specs = [video_data.ClipSpec(*video_data.parse_prompt(p)) for p in prompts]
    clips = ((video_data.render_clips(specs, torch.Generator().manual_seed(3)) + 1) / 2).permute(
        0, 2, 1, 3, 4
    )
    res = adherence(list(clips), prompts)
    assert res["digit"] >= 0.9 and res["colour"] >= 0.95 and res["direction"] >= 0.95
    wrong = [video_data.make_prompt(c, (d + 1) % 10, m) for c, d, m in map(video_data.parse_prompt, prompts)]
    assert adherence(list(clips), wrong)["digit"] <= 0.1
    backwards = adherence([c.flip(0) for c in clips], prompts)  # time reversed: opposite direction
    assert backwards["direction"] <= 0.05 and backwards["digit"] >= 0.9


@pytest.mark.parametrize("name", ["hunyuan-video-tiny", "wan-tiny"])
def test_training_script_components(name, tmp_path):
    """A few iterations of each component: ``all`` saves a loadable pipeline and gives the same weights as
    ``vae`` then ``transformer``; a transformer-only run keeps the saved VAE and its normalisation, moves
    the transformer, and replaces only its own entry in the record; it refuses to run without a VAE."""
    from zoo_training import train_video

    small = dict(vae_iters=2, vae_batch=1, norm_clips=3, n_clips=3, iters=2, batch=2)
    small |= {"decoder_iters": 2} if train_video.CONFIG[name].get("decoder_iters") else {}
    with pytest.raises(SystemExit, match="needs a trained VAE"):
        train_video.main(name, out_dir=tmp_path / "none", component="transformer", **small)
    train_video.main(name, out_dir=tmp_path / "all", record=tmp_path / "all.json", **small)
    split, record = tmp_path / "split", tmp_path / "split.json"
    train_video.main(name, out_dir=split, component="vae", record=record, **small)
    vae_only = MODULES[name].build_pipeline(trained=True, path=split)
    train_video.main(name, out_dir=split, component="transformer", record=record, **small)
    one, two = (MODULES[name].build_pipeline(trained=True, path=p) for p in (tmp_path / "all", split))
    for part in ("vae", "transformer"):
        for (k, a), b in zip(
            getattr(one, part).state_dict().items(), getattr(two, part).state_dict().values()
        ):
            assert torch.equal(a, b), f"{part}.{k}"
    configs = [{k: v for k, v in p.vae.config.items() if k != "_name_or_path"} for p in (one, two, vae_only)]
    assert configs[0] == configs[1] == configs[2]
    assert all(
        torch.equal(a, b) for a, b in zip(vae_only.vae.state_dict().values(), two.vae.state_dict().values())
    )
    moved = [
        k
        for (k, a), b in zip(vae_only.transformer.state_dict().items(), two.transformer.state_dict().values())
        if not torch.equal(a, b)
    ]
    assert moved, "the transformer component did not change the transformer"
    saved = json.loads(record.read_text())
    assert sorted(saved["components"]) == ["transformer", "vae"]
    total = sum(c["train_seconds"] for c in saved["components"].values())
    assert saved["train_seconds"] == pytest.approx(total, abs=0.2)
    vae_entry = saved["components"]["vae"]
    train_video.main(name, out_dir=split, component="transformer", record=record, **small)
    assert json.loads(record.read_text())["components"]["vae"] == vae_entry
    two.set_progress_bar_config(disable=True)
    assert _run(two, MODULES[name], steps=2).shape[1:] == (9, 3, 32, 32)


def test_decoder_finetune_keeps_the_latent_space():
    """The decoder fine-tune trains the decoder only: the encoder (so every latent the transformer was
    trained on) is bit-identical afterwards, and the decoder has moved."""
    from zoo_training import train_video

    vae = hunyuan_tiny.build_pipeline(trained=False, size="tiny").vae
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    cfg = {**train_video.CONFIG["hunyuan-video-tiny"], "decoder_iters": 2, "vae_batch": 1}
    curve = train_video.finetune_decoder(vae, cfg, seed=0)
    after = vae.state_dict()
    frozen = [k for k in before if k.startswith(("encoder.", "quant_conv."))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    assert curve == [] and not any(p.requires_grad for p in vae.parameters())


def test_i2v_first_frame_is_the_prompts_and_fixed():
    """The conditioning image depends on the prompt only (same prompt, same pixels) and shows its colour."""
    import numpy as np

    a, b = wan_i2v_tiny.first_frame(PROMPT), wan_i2v_tiny.first_frame(PROMPT)
    assert a.size == (32, 32) and np.array_equal(np.asarray(a), np.asarray(b))
    other = wan_i2v_tiny.first_frame("a green 5 moving left")
    assert not np.array_equal(np.asarray(a), np.asarray(other))
    px = np.asarray(a).reshape(-1, 3).astype(int)
    bright = px[px.max(1) > 150]
    assert len(bright) and (bright[:, 1] > bright[:, 0]).mean() > 0.8  # green digit pixels


def test_i2v_conditions_on_the_image():
    """The I2V transformer takes 16 + 4 + 16 channels and its output follows the first frame it is given."""
    pipe = wan_i2v_tiny.build_pipeline(trained=True)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.transformer.config.in_channels == 36 and pipe.image_encoder is None
    mod = wan_i2v_tiny
    same = _run(pipe, mod, steps=3)
    other = _run(pipe, mod, steps=3, image=mod.first_frame("a white 7 moving up"))
    assert not torch.equal(same, other)


def test_i2v_training_trains_the_transformer_on_wan_tinys_vae(tmp_path):
    """wan-i2v-tiny has no VAE component (it shares wan-tiny's, refused by name); a few iterations save a loadable
    I2V pipeline with wan-tiny's VAE and text encoder and a trained 36-channel transformer, and its record."""
    from zoo_training import train_video

    small = dict(n_clips=3, iters=2, batch=2)
    with pytest.raises(SystemExit, match="no VAE of its own"):
        train_video.main("wan-i2v-tiny", out_dir=tmp_path / "x", component="vae", **small)
    out, record = tmp_path / "i2v", tmp_path / "i2v.json"
    train_video.main("wan-i2v-tiny", out_dir=out, record=record, **small)
    pipe = wan_i2v_tiny.build_pipeline(trained=True, path=out)
    t2v = wan_tiny.build_pipeline(trained=True)
    for part in ("vae", "text_encoder"):
        for a, b in zip(getattr(pipe, part).state_dict().values(), getattr(t2v, part).state_dict().values()):
            assert torch.equal(a, b), part
    fresh = wan_i2v_tiny.build_transformer("tiny", 0)
    assert pipe.transformer.config.in_channels == 36
    assert any(
        not torch.equal(a, b)
        for a, b in zip(fresh.state_dict().values(), pipe.transformer.state_dict().values())
    )
    assert list(json.loads(record.read_text())["components"]) == ["transformer"]
    pipe.set_progress_bar_config(disable=True)
    assert _run(pipe, wan_i2v_tiny, steps=2).shape[1:] == (9, 3, 32, 32)


def test_easycache_on_i2v_uses_the_noisy_latents():
    """EasyCache's rate and Δ are taken on the noisy latents (the authors' `raw_input`, before the I2V condition
    is concatenated): on wan-i2v-tiny it skips, stays finite, and computes every step at its never-skip knob."""
    from baselines.base import get_method

    pipe = wan_i2v_tiny.build_pipeline(trained=True)
    pipe.set_progress_bar_config(disable=True)
    method = get_method("easycache")
    ref = _run(pipe, wan_i2v_tiny, steps=10)
    method.apply(pipe, method.never_skip, 10, None)
    try:
        same = _run(pipe, wan_i2v_tiny, steps=10)
    finally:
        method.remove(pipe)
    method.apply(pipe, 0.1, 10, None)
    try:
        out = _run(pipe, wan_i2v_tiny, steps=10)
        hits = method.cache_hits(pipe)
    finally:
        method.remove(pipe)
    assert torch.equal(same, ref) and hits > 0 and torch.isfinite(out).all()
