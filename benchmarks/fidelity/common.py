"""Shared machinery of the fidelity checks: load the authors' code at run time, run it and our port, compare."""

from __future__ import annotations

import ast
import copy
import json
import math
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from dpcache.atomic_io import write_text_atomic

RESULTS = Path(__file__).with_name("results.jsonl")


class AuthorsSourceMissing(RuntimeError):
    """The authors' repository is not where --authors-src says; the check is skipped with this reason."""


@dataclass(frozen=True)
class AuthorsSource:
    """A fetched authors' repository: a work tree or a bare git dir (read with `git show HEAD:path`)."""

    root: Path
    repo: str

    def read(self, path: str) -> str:
        if (self.root / path).is_file():
            return (self.root / path).read_text()
        if not (self.root / "HEAD").is_file():
            raise AuthorsSourceMissing(f"{self.repo}: {self.root} is neither a checkout nor a git dir")
        out = subprocess.run(
            ["git", f"--git-dir={self.root}", "show", f"HEAD:{path}"], capture_output=True, text=True
        )
        if out.returncode != 0:
            raise AuthorsSourceMissing(f"{self.repo}: {path} not in {self.root}: {out.stderr.strip()}")
        return out.stdout

    def commit(self) -> str:
        git_dir = self.root if (self.root / "HEAD").is_file() else self.root / ".git"
        out = subprocess.run(
            ["git", f"--git-dir={git_dir}", "rev-parse", "HEAD"], capture_output=True, text=True
        )
        return out.stdout.strip() if out.returncode == 0 else "unknown"


def authors_source(path: str | None, repo: str) -> AuthorsSource:
    """The source at `path`, or AuthorsSourceMissing saying why the check cannot run."""
    if not path:
        raise AuthorsSourceMissing(f"no --authors-src given for {repo}")
    root = Path(path)
    if not root.exists():
        raise AuthorsSourceMissing(f"{repo}: {root} does not exist (fetch the repository first)")
    return AuthorsSource(root, repo)


def load_functions(source: str, names: tuple[str, ...], filename: str) -> dict[str, Callable]:
    """Execute only the imports and the named top-level functions of an authors' script (their scripts load
    FLUX.1-dev at module level, so the file cannot be imported whole); returns the functions by name."""
    tree = ast.parse(source, filename)
    keep = [
        node
        for node in tree.body
        if isinstance(node, ast.Import | ast.ImportFrom)
        or (isinstance(node, ast.FunctionDef) and node.name in names)
    ]
    keep = [n for n in keep if not (isinstance(n, ast.Import) and any(a.name == "pdb" for a in n.names))]
    namespace: dict[str, Any] = {"__name__": f"authors:{filename}"}
    exec(compile(ast.Module(body=keep, type_ignores=[]), filename, "exec"), namespace)
    missing = [n for n in names if n not in namespace]
    if missing:
        raise AuthorsSourceMissing(f"{filename} defines no {', '.join(missing)}")
    return {n: namespace[n] for n in names}


def _single_block_shim(block: torch.nn.Module, txt_len: list[int]) -> Callable:
    """FluxSingleTransformerBlock in the pre-0.35 diffusers signature the authors' scripts call (one concatenated
    text+image stream in, one out); diffusers 0.42's block concatenates the same way inside, so this is exact."""
    original = type(block).forward

    def forward(hidden_states, encoder_hidden_states=None, temb=None, image_rotary_emb=None, **kwargs):
        if encoder_hidden_states is not None:
            return original(block, hidden_states, encoder_hidden_states, temb, image_rotary_emb, **kwargs)
        n = txt_len[0]
        enc, img = original(
            block, hidden_states[:, n:], hidden_states[:, :n], temb, image_rotary_emb, **kwargs
        )
        return torch.cat([enc, img], dim=1)

    return forward


@contextmanager
def authors_forward(
    transformer: torch.nn.Module, forward: Callable, state: dict[str, Any], branches: int
) -> Iterator[None]:
    """Run `transformer` through the authors' patched forward, as their scripts do (`Model.forward = theirs`,
    state as attributes on the model); one copy of `state` per CFG branch (calls alternate cond / uncond, as
    the authors' Wan scripts keep even / odd accumulators), so each branch counts its own steps."""
    states = [copy.deepcopy(state) for _ in range(max(1, branches))]
    calls, txt_len = [0], [0]
    singles = list(getattr(transformer, "single_transformer_blocks", []))
    before = set(transformer.__dict__) | {"forward"}

    def call(*args, **kwargs):
        st = states[calls[0] % len(states)]
        calls[0] += 1
        enc = kwargs.get("encoder_hidden_states")
        txt_len[0] = enc.shape[1] if enc is not None else 0
        for k, v in st.items():
            object.__setattr__(transformer, k, v)
        try:
            return forward(transformer, *args, **kwargs)
        finally:  # every attribute their forward set (previous_input …) belongs to this branch
            for k in [k for k in transformer.__dict__ if k not in before]:
                st[k] = transformer.__dict__.pop(k)

    transformer.forward = call
    for block in singles:
        block.forward = _single_block_shim(block, txt_len)
    try:
        yield
    finally:
        del transformer.forward
        for block in singles:
            del block.forward
        for k in [k for k in transformer.__dict__ if k not in before]:
            transformer.__dict__.pop(k)


class ComputeTrace:
    """Per transformer call, whether the last block's attention really ran (its first Linear fired): the
    computed steps, the same way for our hooks and the authors' forwards."""

    def __init__(self, transformer: torch.nn.Module, last_block: torch.nn.Module) -> None:
        attn = next(c for n, c in last_block.named_children() if n in ("attn", "attn1"))
        linear = next(m for m in attn.modules() if isinstance(m, torch.nn.Linear))
        self.calls: list[bool] = []
        self._h = [
            transformer.register_forward_pre_hook(lambda *a: self.calls.append(False)),
            linear.register_forward_hook(self._hit),
        ]

    def _hit(self, *args) -> None:
        if self.calls:
            self.calls[-1] = True

    def close(self) -> None:
        for h in self._h:
            h.remove()

    def steps(self, branches: int, branch: int = 0) -> list[int]:
        """Computed steps of one branch (calls alternate between `branches` branches)."""
        mine = self.calls[branch :: max(1, branches)]
        return [i for i, c in enumerate(mine) if c]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two images in [0, 1], uncapped (inf when identical): `harness.metrics.psnr_db`."""
    from harness.metrics import psnr_db

    return psnr_db(a, b, cap_db=None)


@dataclass
class Comparison:
    """One ours-vs-authors run: a method, model, T, knob, prompt and seed; outputs and computed steps."""

    method: str
    model: str
    repo: str
    commit: str
    num_steps: int
    knob: str
    value: float
    prompt: str
    seed: int
    max_abs: float
    psnr_db: float
    steps_ours: list[int]
    steps_theirs: list[int]
    steps_equal: bool = False
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.steps_equal = self.steps_ours == self.steps_theirs

    @classmethod
    def of(
        cls,
        pair: Pair,
        model: Model,
        steps: int,
        prompt: Any,
        seed: int,
        ours: torch.Tensor,
        theirs: torch.Tensor,
        steps_ours: list[int],
        steps_theirs: list[int],
        note: str = "",
        extra: dict[str, Any] | None = None,
    ) -> Comparison:
        """The row for one (pair, prompt, seed): outputs compared, computed steps of each side."""
        return cls(pair.method, model.name, pair.repo, pair.commit, steps, pair.knob, pair.value, str(prompt),
                   seed, float((ours - theirs).abs().max()), psnr(ours, theirs), steps_ours, steps_theirs,
                   note=note, extra=dict(pair.extra) if extra is None else extra)  # fmt: skip

    def line(self) -> str:
        return (
            f"{self.method:<10} {self.model:<10} T={self.num_steps:<3} {self.knob}={self.value:<6g} "
            f"max|d|={self.max_abs:.2e} psnr={self.psnr_db:.1f} steps {'==' if self.steps_equal else '!='} "
            f"ours {self.steps_ours} theirs {self.steps_theirs} {self.note}"
        )


def write_results(rows: list[Comparison], path: Path = RESULTS) -> None:
    """Replace the rows of these (method, model, T) in the results file (one JSON object per line), keep the
    others."""
    keys = {(r.method, r.model, r.num_steps) for r in rows}
    old = []
    if path.is_file():
        old = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        old = [r for r in old if (r.get("method"), r.get("model"), r.get("num_steps")) not in keys]
    new = old + [{k: (None if v == math.inf else v) for k, v in asdict(r).items()} for r in rows]
    write_text_atomic(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in new))


@dataclass
class Model:
    """A loaded tiny pipeline and how to sample it (images / video in [0, 1], float CPU)."""

    name: str
    pipe: Any
    spec: Any
    _branches: int | None = None
    _branches: int | None = None

    @property
    def branches(self) -> int:
        """Transformer calls per step (2 with CFG run as two calls, else 1), counted on a 2-step sample."""
        if self._branches is None:
            calls = [0]
            h = self.pipe.transformer.register_forward_pre_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
            try:
                self.sample(self.spec.calibration_prompts[0], 0, 2)
            finally:
                h.remove()
            self._branches = calls[0] // 2
        return self._branches

    def sample(self, prompt: Any, seed: int, steps: int) -> torch.Tensor:
        from harness.context import output_tensor

        out = self.pipe(
            generator=torch.Generator("cpu").manual_seed(seed),
            output_type="pt",
            **self.spec.pipeline_kwargs(prompt, steps),
        )
        return output_tensor(out)


def load_model(name: str) -> Model:
    from harness.zoo.registry import get_spec, load_pipeline

    spec = get_spec(name)
    pipe = load_pipeline(spec)
    pipe.set_progress_bar_config(disable=True)
    model = Model(name, pipe, spec)
    _ = model.branches  # counted now, outside any traced run
    return model


def traced(model: Model, run: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, ComputeTrace]:
    """The output of `run()` and the trace of which calls computed the last block."""
    from dpcache.adapters import block_layout

    tr = model.pipe.transformer
    trace = ComputeTrace(tr, block_layout(tr).blocks[-1])
    try:
        out = run()
    finally:
        trace.close()
    return out, trace


@dataclass
class Pair:
    """One method's two sides at one knob value: our apply / remove, the authors' forward and its state."""

    method: str
    repo: str
    commit: str
    knob: str
    value: float
    apply: Callable[[], None]
    remove: Callable[[], None]
    forward: Callable
    state: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)


def compare_pair(model: Model, pair: Pair, steps: int, prompt: Any, seed: int) -> Comparison:
    """Sample `prompt` with our port and with the authors' forward; compare outputs and computed steps."""

    def ours() -> torch.Tensor:
        pair.apply()
        try:
            return model.sample(prompt, seed, steps)
        finally:
            pair.remove()

    def theirs() -> torch.Tensor:
        with authors_forward(model.pipe.transformer, pair.forward, pair.state, model.branches):
            return model.sample(prompt, seed, steps)

    a, ta = traced(model, ours)
    b, tb = traced(model, theirs)
    n = model.branches
    return Comparison.of(pair, model, steps, prompt, seed, a, b, ta.steps(n), tb.steps(n))


def materialize(src: AuthorsSource, subdir: str) -> Path:
    """The authors' `subdir` as files in a temporary directory outside the repository (their modules import
    each other by top-level name, so they need a directory on sys.path); removed at exit."""
    import atexit
    import shutil
    import tempfile

    if (src.root / subdir).is_dir():
        return src.root / subdir
    tmp = Path(tempfile.mkdtemp(prefix="authors-src-"))
    atexit.register(shutil.rmtree, tmp, True)
    archive = subprocess.run(
        ["git", f"--git-dir={src.root}", "archive", "HEAD", subdir], capture_output=True, check=False
    )
    if archive.returncode != 0:
        raise AuthorsSourceMissing(f"{src.repo}: no {subdir} in {src.root}")
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive.stdout, check=True)
    return tmp / subdir
