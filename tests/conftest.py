"""The unit tests' environment (set once, before any test module imports) and where their helpers live.

Environment: no model hub at test time. These variables are set in this process before pytest imports
any test module, so every module sees them at import, and every child process a test starts (subprocess,
multiprocessing spawn, pytester's runpytest_subprocess) inherits them through `os.environ`.

Helpers are plain modules next to this file, imported by name (`pythonpath` in pyproject.toml puts this
folder and the repository root on `sys.path` for every test run):

- `tiny_pipelines`: tiny random pipelines of each family, prompts and generators (runtime/baseline tests)
- `report_synth`: synthetic result records and runs for the report tests
- `fake_eval_scorer`: a stand-in scorer script for the evaluation-environment protocol
- `mlflow_server`: a local MLflow server on a free port (tracking tests and faults)
- `plugin_demo`: the demo suite the pytest-plugin tests run with pytester

Fixture: `one_thread` (module scope; `pytestmark = pytest.mark.usefixtures("one_thread")`) runs a module's
tests with one intra-op thread: on 2 shared, busy cores that is several times faster than the default.
"""

from __future__ import annotations

import os
import sys

import pytest

# No downloads at test time: forced, not defaulted (a test never needs the hub).
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}
os.environ.update(OFFLINE_ENV)
if "huggingface_hub" in sys.modules:  # imported by a plugin before this file: its constant is read at import
    import huggingface_hub.constants

    huggingface_hub.constants.HF_HUB_OFFLINE = True


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread for the module's tests, restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
