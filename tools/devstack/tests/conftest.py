from __future__ import annotations

import pytest

STOPS_RABBIT = "devstack_stops_rabbit"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{STOPS_RABBIT}: stops the session's RabbitMQ node; runs last"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The session shares one broker node; whatever stops it goes after everything else.
    items.sort(key=lambda item: item.get_closest_marker(STOPS_RABBIT) is not None)
