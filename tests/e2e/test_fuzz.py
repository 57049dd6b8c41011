"""A fuzz pass over every route the gateway serves, against a whole running cluster
in front of the emulator: hypothesis makes path parameters, query strings, headers and bodies
(random JSON of random depth, wrong types on Ollama's own fields, lone surrogates, huge strings,
bytes that are not JSON, random ids). Every answer must come within a bound and none may be a
5xx; afterwards the cluster still answers an ordinary chat.

Derandomized (a fixed seed per route, no example database), so CI sees the same cases every run.
The number of cases tried is printed at the end (run with `-s` to see it).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from corral_devstack.cluster import Cluster
from corral_emulator import EmulatorControl
from corral_gateway.app import create_app
from corral_gateway.settings import GatewaySettings

pytestmark = pytest.mark.e2e

# Sized so the module runs in well under a minute on two busy cores; raise it for a longer
# hunt (CORRAL_FUZZ_EXAMPLES=200).
EXAMPLES_PER_ROUTE = int(os.environ.get("CORRAL_FUZZ_EXAMPLES", "25"))
# A hang is a failure: every answer, streams included, must be whole within this.
ANSWER_TIMEOUT_S = 20.0
TRIED: Counter[str] = Counter()


def gateway_routes() -> list[tuple[str, str]]:
    """(method, path template) of every route the gateway's app factory registers."""
    app = create_app(GatewaySettings())
    found = set()
    for route in app.router.routes():
        if route.method in ("HEAD", "*"):
            continue
        info = route.resource.get_info() if route.resource is not None else {}
        template = info.get("formatter") or info.get("path")
        if template:
            found.add((route.method, str(template)))
    return sorted(found)


ROUTES = gateway_routes()
PARAM = re.compile(r"\{([^}:]+)(:[^}]*)?\}")

JSON_LEAF = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
JSON_VALUE = st.recursive(
    JSON_LEAF,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=25,
)
MODEL = st.sampled_from(["llama3.2", "tiny", "", "no-such-model", "m" * 5000]) | st.text(
    max_size=30
)
MESSAGE = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["user", "assistant", "system", "tool"]) | JSON_VALUE,
        "content": st.text(max_size=60) | JSON_VALUE,
        "images": st.lists(st.sampled_from(["aGk=", "not base64", ""]) | JSON_VALUE, max_size=2)
        | JSON_VALUE,
        "tool_calls": JSON_VALUE,
    },
)
# Ollama's own fields, each sometimes right and sometimes the wrong type.
KNOWN_FIELDS = {
    "model": MODEL | JSON_VALUE,
    "name": MODEL,
    "messages": st.lists(MESSAGE | JSON_VALUE, max_size=3) | JSON_VALUE,
    "prompt": st.text(max_size=60) | JSON_VALUE,
    "input": st.text(max_size=20) | st.lists(st.text(max_size=10), max_size=3) | JSON_VALUE,
    "stream": st.booleans() | JSON_VALUE,
    "format": st.sampled_from(["json", ""]) | JSON_VALUE,
    "options": st.dictionaries(
        st.sampled_from(["temperature", "num_predict", "seed", "session_id", "queue_timeout"]),
        JSON_VALUE,
        max_size=3,
    )
    | JSON_VALUE,
    "keep_alive": st.sampled_from(["5m", "0", "-1", "soon", 0, -1]) | JSON_VALUE,
    "think": st.sampled_from([True, False, "high", "very"]) | JSON_VALUE,
    "tools": JSON_VALUE,
    "context": st.lists(st.integers(), max_size=3) | JSON_VALUE,
    "session_id": st.text(max_size=140) | JSON_VALUE,
    "request_id": st.text(max_size=140) | JSON_VALUE,
    "priority": st.sampled_from(["high", "low", "urgent"]) | JSON_VALUE,
    "title": st.text(max_size=40) | JSON_VALUE,
    "source": MODEL,
    "destination": MODEL,
    "from": MODEL,
    "top_logprobs": JSON_VALUE,
}
STRUCTURED_BODY = st.fixed_dictionaries(
    {}, optional={key: value for key, value in KNOWN_FIELDS.items()}
).map(orjson.dumps)
LITERAL_BODIES = st.sampled_from(
    [
        b"",
        b"null",
        b"[]",
        b'"\\ud800"',
        b'{"model":"llama3.2","messages":[{"role":"user","content":"\\ud800"}]}',
        b'{"model":"llama3.2","prompt":"x","options":{"temperature":1e999}}',
        b'{"model":"llama3.2","messages":[null]}',
        b'{"model":"llama3.2","top_logprobs":-1e999}',
        b'{"model":"llama3.2","context":[123456789012345678901234567890]}',
        b'{"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]',
        b"\xff\xfe\x00",
    ]
)


@st.composite
def deep_body(draw: st.DrawFn) -> bytes:
    depth = draw(st.integers(min_value=1, max_value=3000))
    nested = b"[" * depth + b"]" * depth
    if draw(st.booleans()):
        return nested
    return b'{"model":"llama3.2","prompt":"x","options":{"x":' + nested + b"}}"


@st.composite
def huge_body(draw: st.DrawFn) -> bytes:
    size = draw(st.sampled_from([10_000, 300_000, 2_000_000]))
    field = draw(st.sampled_from(["model", "prompt", "title", "session_id"]))
    return orjson.dumps({"model": "llama3.2", field: "x" * size})


BODY = st.one_of(
    st.none(),
    st.binary(max_size=200),
    JSON_VALUE.map(orjson.dumps),
    STRUCTURED_BODY,
    STRUCTURED_BODY,
    LITERAL_BODIES,
    deep_body(),
    huge_body(),
)
HEADER_TEXT = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=300
)
HEADERS = st.dictionaries(
    st.sampled_from(
        [
            "X-Request-Id",
            "X-Session-Id",
            "X-Client-Id",
            "X-Priority",
            "X-Queue-Timeout",
            "X-Queue-Progress",
            "Content-Type",
        ]
    ),
    HEADER_TEXT
    | st.sampled_from(["a.b", "ok-id", "0", "1e999", "-5"])
    | st.integers(min_value=100, max_value=4000).map(lambda n: "r" * n),
    max_size=4,
)
QUERY = st.dictionaries(
    st.sampled_from(["limit", "offset", "q", "model", "keep_alive", "force"]),
    st.text(max_size=30)
    | st.sampled_from(["-1", "0", "10", "1e999", "99999999999999999999999", "5m"]),
    max_size=3,
)
PATH_VALUE = (
    st.text(min_size=1, max_size=60)
    | st.sampled_from(["llama3.2", "tiny", "a.b", "..", "ok-id", "%2e%2e"])
    | st.integers(min_value=100, max_value=3000).map(lambda n: "r" * n)
)


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


async def send(
    cluster: Cluster,
    method: str,
    path: str,
    query: dict[str, str],
    headers: dict[str, str],
    body: bytes | None,
) -> tuple[int, bytes]:
    url = URL(f"{cluster.gateway_url}{path}", encoded=True)
    if query:
        url = URL(f"{url}?{urlencode(query)}", encoded=True)
    timeout = aiohttp.ClientTimeout(total=ANSWER_TIMEOUT_S)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.request(method, url, data=body, headers=headers) as response,
    ):
        return response.status, await response.read()


def fill(template: str, data: st.DataObject) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        text = data.draw(PATH_VALUE)
        if name == "action":
            # Pausing or draining the lane would hold every later case; those are tested
            # on their own (test_queue, test_edge_validation).
            text = data.draw(PATH_VALUE.filter(lambda t: t not in ("pause", "drain")))
        # Model names may hold '/', every other parameter is one segment.
        return quote(text, safe="/" if name == "name" else "")

    return PARAM.sub(value, template)


@pytest.mark.parametrize(("method", "template"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_no_route_answers_5xx_or_hangs(
    cluster: Cluster, loop: asyncio.AbstractEventLoop, method: str, template: str
) -> None:
    @settings(
        max_examples=EXAMPLES_PER_ROUTE,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def case(data: st.DataObject) -> None:
        path = fill(template, data)
        query = data.draw(QUERY)
        headers = data.draw(HEADERS)
        body = data.draw(BODY) if method in ("POST", "PUT", "PATCH", "DELETE") else None
        TRIED[f"{method} {template}"] += 1
        try:
            status, answer = loop.run_until_complete(
                send(cluster, method, path, query, headers, body)
            )
        except TimeoutError as exc:
            raise AssertionError(
                f"{method} {path} did not answer within {ANSWER_TIMEOUT_S}s"
            ) from exc
        assert status < 500, (
            f"{method} {path} {query} {headers} {body!r:.300} -> {status} {answer!r:.500}"
        )

    case()


def test_cluster_still_serves_after_fuzzing(
    cluster: Cluster, loop: asyncio.AbstractEventLoop
) -> None:
    async def chat() -> Any:
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=ANSWER_TIMEOUT_S)
        ) as session:
            # The fuzz may have deleted or replaced models: put the emulator's catalogue back.
            async with EmulatorControl(cluster.ollama_url) as control:
                await control.reset()
            await session.post(f"{cluster.gateway_url}/admin/lane/resume")
            body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
            async with session.post(
                f"{cluster.gateway_url}/api/chat", json={**body, "stream": False}
            ) as response:
                return response.status, await response.json()

    status, answer = loop.run_until_complete(chat())
    assert status == 200, answer
    assert answer["done"] is True
    total = sum(TRIED.values())
    print(f"\nfuzz: {total} cases over {len(TRIED)} routes")
    assert total >= len(ROUTES) * EXAMPLES_PER_ROUTE // 2
