"""What every harness method is: `BenchMethod` (configured at a budget on one model context) and the
`Configured` result it returns, or `UnreachableBudget` when it cannot hit the budget."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harness.budget import BudgetMatch
from harness.context import ModelContext


class UnreachableBudget(RuntimeError):
    """A method cannot be configured at this budget; `match` says which budgets it can hit."""

    def __init__(self, message: str, match: BudgetMatch | None = None) -> None:
        super().__init__(message)
        self.match = match


@dataclass
class Configured:
    """A method configured at one budget: apply/remove it, sample with `num_steps`, read its cache hits."""

    method: str
    budget: int | None
    num_steps: int
    config_tag: str
    apply: Callable[[], None] = lambda: None
    remove: Callable[[], None] = lambda: None
    cache_hits: Callable[[], int | None] = lambda: None
    knobs: dict[str, Any] = field(default_factory=dict)
    schedule: list[int] | None = None
    is_cache: bool = False
    adaptive: bool = False  # compute depends on the prompt (threshold methods)
    match: BudgetMatch | None = None
    artifacts: list[str] = field(default_factory=list)


class BenchMethod:
    """Base of the registry entries: name, the families it runs on, its knob, `configure(ctx, K)`."""

    name = ""
    knob = ""
    description = ""

    def supports(self, family: str) -> tuple[bool, str]:
        return True, ""

    def prepare(self, ctx: ModelContext) -> None:
        """Per-model work done once (calibration); cached on disk."""

    def configure(self, ctx: ModelContext, budget: int) -> Configured:
        raise NotImplementedError
