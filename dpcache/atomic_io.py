"""The one atomic file writer: a temp file in the target's folder, then `os.replace` — never a partial file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _umask_mode() -> int:
    """The permissions a plain `open(path, "w")` would give a new file (0o666 under the process umask)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomic(
    path: str | os.PathLike[str],
    write: Callable[[str], Any],
    *,
    fsync: bool = False,
    mode: int | None = None,
) -> Path:
    """Write `path` atomically: `write(tmp)` fills a temp file `.NAME.<random>.tmp` in the same folder (the
    folder is created), which is fsync'd when `fsync`, given `mode` (default: what `open()` would give it
    under the umask) and renamed over `path` with `os.replace`. Readers see the old file or the new one; on
    any error (or interrupt) the temp file is removed and the old file is left as it was."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode() if mode is None else mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def write_text_atomic(
    path: str | os.PathLike[str], text: str, *, fsync: bool = False, mode: int | None = None
) -> Path:
    """`write_atomic` of `text` in UTF-8."""
    return write_atomic(
        path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), fsync=fsync, mode=mode
    )
