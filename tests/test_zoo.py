"""Model zoo: the committed tiny image pipelines, the medium builders, the registry and full-model loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch  # torch and diffusers are core dependencies: a missing one is an error, not a skip

from harness.zoo import registry

IMAGE_TINY = ["flux-tiny", "dit-tiny"]
ALL_NAMES = [
    "flux-tiny",
    "wan-tiny",
    "wan-i2v-tiny",
    "hunyuan-video-tiny",
    "dit-tiny",
    "flux-medium",
    "wan-medium",
    "wan-i2v-medium",
    "hunyuan-video-medium",
    "dit-medium",
    "flux-dev",
    "wan2.1-i2v-14b-720p",
    "hunyuan-video",
    "dit-xl-2-256",
]


@pytest.fixture(autouse=True)
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def _tiny(name: str):
    spec = registry.get_spec(name)
    ok, reason = registry.availability(spec)
    if not ok:
        pytest.skip(reason)
    return spec


def _sample(pipe, spec, prompt, steps: int, seed: int = 0) -> np.ndarray:
    kw = spec.pipeline_kwargs(prompt, steps)
    return pipe(**kw, generator=torch.Generator().manual_seed(seed), output_type="np").images


@pytest.fixture(scope="module")
def loaded():
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            from diffusers import DiffusionPipeline

            spec = _tiny(name)
            plain = DiffusionPipeline.from_pretrained(spec.path, local_files_only=True)
            assert type(plain).__name__ == spec.pipeline_class
            pipe = registry.load_pipeline(spec)  # the same from_pretrained, plus DiT's id2label fix-up
            cache[name] = (spec, pipe)
        return cache[name]

    return get


def test_registry_lists_every_model():
    names = [s.name for s in registry.list_specs()]
    assert names == [n for n in ALL_NAMES if n in names] or sorted(names) == sorted(ALL_NAMES)
    assert sorted(names) == sorted(ALL_NAMES)
    with pytest.raises(KeyError, match="known"):
        registry.get_spec("nope")
    full = registry.get_spec("flux-dev")
    assert (full.num_inference_steps, full.guidance_scale, full.height) == (50, 3.5, 1024)
    wan = registry.get_spec("wan2.1-i2v-14b-720p")
    assert (wan.height, wan.width, wan.num_frames, wan.guidance_scale) == (832, 832, 81, 3.0)
    assert registry.get_spec("dit-xl-2-256").guidance_scale == 1.5


@pytest.mark.parametrize("name", ["flux-tiny", "dit-tiny", "flux-dev", "dit-xl-2-256", "wan2.1-i2v-14b-720p"])
def test_prompt_sets_are_disjoint(name):
    spec = registry.get_spec(name)
    cal, ev = spec.calibration_prompts, spec.evaluation_prompts
    assert cal and ev and not set(cal) & set(ev)
    if name.endswith("-tiny"):
        assert len(ev) >= 50


def test_prompt_becomes_pipeline_kwargs():
    kw = registry.get_spec("flux-tiny").pipeline_kwargs("a red 7 on a black background")
    assert kw["prompt"] == "a red 7 on a black background" and kw["true_cfg_scale"] >= 3
    assert kw["negative_prompt"] == "" and kw["height"] == 32
    assert registry.get_spec("dit-tiny").pipeline_kwargs("a red 7 on a black background")["class_labels"] == [
        7
    ]
    assert registry.get_spec("dit-xl-2-256").pipeline_kwargs(207)["class_labels"] == [207]
    i2v = registry.get_spec("wan2.1-i2v-14b-720p").pipeline_kwargs("a cat")
    assert i2v["image"].size == (832, 832) and i2v["num_frames"] == 81
    tiny = registry.get_spec("wan-i2v-tiny")
    kw = tiny.pipeline_kwargs("a red 3 moving left")
    assert (
        kw["image"].size == (32, 32) and kw["guidance_scale"] == 3.0 and kw["prompt"] == "a red 3 moving left"
    )
    assert tiny.dpcache == {"first_full_steps": 4, "last_full_steps": 1}  # the released Wan settings
    assert kw["image"].tobytes() != tiny.pipeline_kwargs("a red 4 moving left")["image"].tobytes()


def test_models_json_fields():
    rows = registry.models_json()
    keys = {
        "name",
        "family",
        "scale",
        "pipeline_class",
        "path",
        "num_inference_steps",
        "height",
        "width",
        "num_frames",
        "guidance_scale",
        "available",
        "reason",
    }
    assert [r["name"] for r in rows] == [s.name for s in registry.list_specs()]
    for r in rows:
        assert keys <= set(r)
        assert r["available"] or r["reason"]


@pytest.mark.parametrize("name", IMAGE_TINY)
def test_tiny_full_steps_shape(loaded, name):
    spec, pipe = loaded(name)
    assert type(pipe).__name__ == spec.pipeline_class
    img = _sample(pipe, spec, spec.evaluation_prompts[0], spec.num_inference_steps)
    assert img.shape == (1, spec.height, spec.width, 3)
    assert np.isfinite(img).all() and img.std() > 0.02


@pytest.mark.parametrize("name", IMAGE_TINY)
def test_tiny_deterministic_per_seed(loaded, name):
    spec, pipe = loaded(name)
    a = _sample(pipe, spec, spec.evaluation_prompts[1], 8, seed=3)
    b = _sample(pipe, spec, spec.evaluation_prompts[1], 8, seed=3)
    c = _sample(pipe, spec, spec.evaluation_prompts[1], 8, seed=4)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("name", IMAGE_TINY)
def test_tiny_save_pretrained_round_trip(loaded, name, tmp_path):
    from diffusers import DiffusionPipeline

    spec, pipe = loaded(name)
    pipe.save_pretrained(tmp_path, safe_serialization=True)
    assert list(tmp_path.rglob("*.safetensors")) and not list(tmp_path.rglob("*.bin"))
    again = DiffusionPipeline.from_pretrained(tmp_path, local_files_only=True)
    again.set_progress_bar_config(disable=True)
    a = _sample(pipe, spec, spec.evaluation_prompts[2], 4)
    b = _sample(again, spec, spec.evaluation_prompts[2], 4)
    assert np.array_equal(a, b)
    if name == "dit-tiny":
        assert again.get_label_ids(["7"]) == [7]


def test_tiny_pipelines_are_small():
    for name in IMAGE_TINY:
        spec = _tiny(name)
        size = sum(f.stat().st_size for f in __import__("pathlib").Path(spec.path).rglob("*") if f.is_file())
        # dit-tiny's 12 blocks each carry DiT's 1001-row class embedding (2.7 MB of its 7.2)
        assert size < 7.5e6, f"{name}: {size / 1e6:.1f} MB"


@pytest.mark.parametrize("name", ["flux-medium", "dit-medium", "wan-medium", "hunyuan-video-medium"])
def test_medium_spec_builds(name):
    spec = registry.get_spec(name)
    ok, reason = registry.availability(spec)
    if not ok:
        pytest.skip(reason)
    pipe = registry.load_pipeline(spec)
    assert type(pipe).__name__ == spec.pipeline_class
    n = sum(p.numel() for p in pipe.transformer.parameters())
    assert n > 5_000_000


def test_random_weight_builders_run():
    from harness.zoo import dit_tiny, flux_tiny

    flux = flux_tiny.build_pipeline(seed=0, trained=False)
    img = flux(
        **flux_tiny.call_kwargs("a blue 3 on a grass background"),
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert img.shape == (1, 32, 32, 3)
    assert (
        len(flux.transformer.transformer_blocks) >= 2 and len(flux.transformer.single_transformer_blocks) >= 2
    )
    dit = dit_tiny.build_pipeline(seed=0, trained=False)
    assert dit.transformer.config.num_embeds_ada_norm == 1000
    img = dit(
        class_labels=[3], num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    assert img.shape == (1, 32, 32, 3)


@pytest.mark.parametrize(("name", "builder"), [("flux-dev", "flux_tiny"), ("dit-xl-2-256", "dit_tiny")])
def test_full_loading_path_with_local_dir(name, builder, tmp_path, monkeypatch):
    """The full-scale path (from_pretrained, local only) works on a pipeline saved under $DPCACHE_MODEL_DIR."""
    import importlib

    spec = registry.get_spec(name)
    mod = importlib.import_module(f"harness.zoo.{builder}")
    mod.build_pipeline(seed=0).save_pretrained(tmp_path / spec.dir_name, safe_serialization=True)
    monkeypatch.setenv(registry.MODEL_DIR_ENV, str(tmp_path))
    assert registry.availability(spec) == (True, "")
    assert registry.resolve_full_path(spec) == tmp_path / spec.dir_name
    pipe = registry.load_pipeline(spec, dtype=torch.float32)
    assert type(pipe).__name__ == spec.pipeline_class
    if name == "dit-xl-2-256":
        assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    # explicit path, too
    assert registry.availability(spec, path=tmp_path / spec.dir_name)[0]


@pytest.mark.parametrize("name", ["flux-dev", "wan2.1-i2v-14b-720p", "hunyuan-video", "dit-xl-2-256"])
def test_missing_full_model_is_a_clear_skip(name, tmp_path, monkeypatch):
    monkeypatch.setenv(registry.MODEL_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    spec = registry.get_spec(name)
    ok, reason = registry.availability(spec)
    assert not ok
    assert spec.hub_id in reason and registry.MODEL_DIR_ENV in reason
    with pytest.raises(RuntimeError, match="unavailable"):
        registry.load_pipeline(spec)
    pytest.skip(reason)


def test_tokenizers_know_the_prompt_words():
    from harness.zoo.tokenizers import build_clip_tokenizer, build_t5_tokenizer

    clip, t5 = build_clip_tokenizer(), build_t5_tokenizer()
    prompt = "a red 7 on a brick background"
    assert clip.convert_ids_to_tokens(clip(prompt).input_ids)[1:-1] == [w + "</w>" for w in prompt.split()]
    assert t5.convert_ids_to_tokens(t5(prompt).input_ids)[:-1] == ["▁" + w for w in prompt.split()]


def test_scenes_and_prompt_parsing():
    from harness.zoo import digits_data

    images, scenes = digits_data.sample_scenes(8, seed=0)
    again, _ = digits_data.sample_scenes(8, seed=0)
    assert images.shape == (8, 32, 32, 3) and np.array_equal(images, again)
    for s in scenes:
        assert digits_data.parse_prompt(s.prompt) == s and s.colour != s.background


def test_classifier_reads_clean_scenes():
    from harness.zoo import classifier, digits_data

    if not (classifier.CLASSIFIER_DIR / "model.safetensors").exists():
        pytest.skip("classifier not trained: run `python -m zoo_training.train classifier`")
    images, scenes = digits_data.sample_scenes(64, seed=2024)
    adh = classifier.prompt_adherence(images, [s.prompt for s in scenes])
    assert adh["n"] == 64 and adh["digit"] >= 0.9 and adh["colour"] >= 0.9 and adh["background"] >= 0.9
    labels = classifier.prompt_adherence(images, [s.digit for s in scenes])
    assert labels["digit"] == adh["digit"] and labels["colour"] is None


def test_shared_components_are_stored_once():
    """wan-i2v-tiny's VAE / text encoder / tokenizer are wan-tiny's, stored once (relative links that resolve
    inside the zoo). The zoo's stored size is reported in reports/zoo/README.md (over the 20 MB target)."""
    import os

    root = registry.TINY_ROOT
    links = {p.relative_to(root).as_posix(): p for p in root.glob("*/*") if p.is_symlink()}
    assert set(links) >= {"wan-i2v-tiny/vae", "wan-i2v-tiny/text_encoder", "wan-i2v-tiny/tokenizer"}
    for p in links.values():
        assert not os.path.isabs(os.readlink(p)) and p.resolve().is_relative_to(root.resolve())
        assert p.is_dir() and any(p.iterdir())
