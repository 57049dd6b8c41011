"""corralctl's tests run the installed `corralctl` against a whole cluster in front of the
emulator, with keys on. The emulator and cluster fixtures are the suite's own
(tests/conftest.py), shared from there rather than copied."""

from __future__ import annotations

import sys
from pathlib import Path

# tests/ is importable (as `tests`) once pytest has loaded its conftest; when only this
# directory is collected, nothing has, so the repository's root is put on the path for it.
ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from tests.conftest import emu, emulator, fresh_broker, new_cluster  # noqa: E402

__all__ = ["emu", "emulator", "fresh_broker", "new_cluster"]
