"""JSON-over-files protocol spoken by scorer scripts that run in the separate evaluation environment.

Stdlib + numpy only: this file is imported by scripts running under another Python (see harness.eval_env).
  <script> check --output OUT.json [--weights DIR]            → {"available": bool, "reason": str}
  <script> score --request REQ.json --output OUT.json [...]   → {"scores": [float, ...], "details": {...}}
REQ.json: {"images": ["0000.npy", ...], "prompts": [str, ...], "layout": "CHW"|"FCHW", "range": [0, 1]}.
A failure while scoring writes {"error": "..."} and exits with status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Callable
from typing import Any

CheckFn = Callable[[argparse.Namespace], "tuple[bool, str]"]
ScoreFn = Callable[[list, list, argparse.Namespace], "tuple[list[float], dict[str, Any]]"]


def _write(path: str, payload: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f)


def serve(check: CheckFn, score: ScoreFn, argv: list[str] | None = None) -> int:
    """Parse the command line, run `check` or `score`, write the JSON answer; returns the exit status."""
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["check", "score"])
    parser.add_argument("--output", required=True)
    parser.add_argument("--request")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            ok, reason = check(args)
            _write(args.output, {"available": bool(ok), "reason": str(reason), "python": sys.executable})
            return 0
        import numpy as np

        with open(args.request, encoding="utf-8") as f:
            req = json.load(f)
        images = [np.load(p, allow_pickle=False) for p in req["images"]]
        scores, details = score(images, list(req["prompts"]), args)
        _write(args.output, {"scores": [float(s) for s in scores], "details": details})
        return 0
    except Exception as e:  # reported to the harness through the output file
        _write(args.output, {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})
        return 1
