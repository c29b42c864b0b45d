"""`python -m harness.report [--json-in F] [--out DIR] ...`: the same as `dpcache-bench report ...`."""

from __future__ import annotations

import sys

from harness.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
