from __future__ import annotations

from pathlib import Path

import pytest

STOPS_RABBIT = "devstack_stops_rabbit"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{STOPS_RABBIT}: stops the session's RabbitMQ node; runs last"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The session shares one broker node; whatever stops it goes after everything else.
    items.sort(key=lambda item: item.get_closest_marker(STOPS_RABBIT) is not None)


FAKE_SERVICE = Path(__file__).parent / "fake_service.py"
FAKE_MAIN = """\
import runpy, sys
sys.argv = [{script!r}, {role!r}, *sys.argv[1:]]
runpy.run_path({script!r}, run_name="__main__")
"""


@pytest.fixture
def fake_services(tmp_path: Path) -> Path:
    """A directory that, on PYTHONPATH, makes `python -m corral_<x>` run the fake service."""
    root = tmp_path / "fakes"
    for role in ("scheduler", "session_store", "gateway", "emulator"):
        package = root / f"corral_{role}"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "__main__.py").write_text(FAKE_MAIN.format(script=str(FAKE_SERVICE), role=role))
    return root
