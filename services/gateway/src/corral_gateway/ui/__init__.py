"""The operator's page (`/ui`): the lane live, the models, recent requests, tokens per second,
and the lane's buttons, as one static page served by the gateway (no build step, nothing
external) over the admin endpoints and one event stream, `GET /admin/lane/events`
(event_routes.py). docs/ui.md describes it.

- page_routes.py: the page's files (static/), open to anyone; the data is behind admin access.
- event_routes.py: the stream of lane snapshots, an admin route of the operators' surface.
- lane_feed.py: what the stream is fed (statuses, this gateway's finished requests and tokens).
- snapshot.py, recent.py, throughput.py: the snapshot's parts, pure.
"""

from __future__ import annotations

from aiohttp import web

from corral_gateway.surfaces import ADMIN, Route
from corral_gateway.ui import event_routes, page_routes
from corral_gateway.ui.lane_feed import FEED, LaneFeed, close_feed, feed_ctx

ROUTES = (Route("GET", "/admin/lane/events", event_routes.lane_events, "admin"),)


def install(app: web.Application) -> None:
    """The page's routes, its event stream, and the feed behind it (started after the
    gateway's own context, whose broker and hub it uses)."""
    app[FEED] = LaneFeed()
    page_routes.add_routes(app.router)
    ADMIN.add(app.router, *ROUTES)
    app.cleanup_ctx.append(feed_ctx)
    app.on_shutdown.append(close_feed)
