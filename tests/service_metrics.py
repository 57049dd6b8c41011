"""Reading a service's Prometheus /metrics in cross-process tests."""

from __future__ import annotations

import aiohttp

from corral_devstack.cluster import Cluster
from tests.polling import eventually


def metrics_url(cluster: Cluster, service: str) -> str:
    ready_url = cluster.services[service].ready_url
    assert ready_url is not None
    return ready_url.removesuffix("/ready") + "/metrics"


async def metrics_text(cluster: Cluster, service: str = "scheduler") -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(metrics_url(cluster, service)) as response,
    ):
        return await response.text()


async def wait_for_metric(
    cluster: Cluster, line: str, service: str = "scheduler", within_s: float = 10.0
) -> None:
    """Until the service's /metrics shows `line` (a sample, value included)."""

    async def shown() -> bool:
        return line in await metrics_text(cluster, service)

    await eventually(shown, within_s, what=f"{service} metric {line!r}")


async def metric_value(cluster: Cluster, sample: str, service: str = "scheduler") -> float:
    """The value of one sample (`name{labels}`), 0 when it has not been recorded yet."""
    for line in (await metrics_text(cluster, service)).splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def wait_for_value(
    cluster: Cluster, sample: str, at_least: float, service: str = "scheduler"
) -> None:
    async def reached() -> bool:
        return await metric_value(cluster, sample, service) >= at_least

    await eventually(reached, what=f"{service} metric {sample} >= {at_least}")
