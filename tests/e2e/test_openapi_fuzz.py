"""Schemathesis over the OpenAPI document the gateway serves at /openapi.json, against
a whole running cluster with keys on, in three passes over every operation:

- without a key (or with the made-up keys schemathesis generates for the security schemes):
  never a 5xx, and every route but the open ones answers 401, whatever else is wrong with the
  request;
- with a user key (created through POST /admin/keys, sent as `Authorization: Bearer`): never a
  5xx, never a 401, and every admin route answers 403;
- with the operator's admin key (sent as `X-API-Key`): never a 5xx, never a 401 or 403. The
  lane is only ever resumed here (pausing or draining it would hold every later case;
  test_queue covers those), and the emulator's catalogue is put back afterwards.

The cases are made once per operation by schemathesis from the document (valid requests and,
where an operation has inputs, requests that break the schema: wrong types, missing fields, bad
ids) and sent in all three passes. Each answer is also checked against the document: its status
and content type are ones the operation documents, an error body has its surface's error shape,
and a request that breaks the schema is refused. The one 5xx let through is Ollama's own: a
pull, push or create the backend fails answers 500 with the backend's text, as Ollama does.
Derandomized (a fixed seed, no example database, no shrinking), so every run sends the same
cases; the number sent is printed at the end (run with `-s` to see it).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import urllib.request
from collections import Counter
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode, Response
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from corral_devstack.cluster import Cluster
from corral_emulator import EmulatorControl
from corral_gateway import openapi
from corral_gateway.app import create_app
from corral_gateway.settings import GatewaySettings
from tests.fixtures import ClusterFactory, Emulator

pytestmark = pytest.mark.e2e

# Sized so the module runs in well under a minute on two busy cores; raise it for a longer
# hunt (CORRAL_OPENAPI_FUZZ_EXAMPLES=100).
EXAMPLES = int(os.environ.get("CORRAL_OPENAPI_FUZZ_EXAMPLES", "10"))
ANSWER_TIMEOUT_S = 20.0
ADMIN_KEY = "openapi-fuzz-operator-key-0123456789abcdef"
AUTH_HEADERS = ("authorization", "x-api-key")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
TRIED: Counter[str] = Counter()
# Cases answered with a documented 500 (documented_500), by route.
DOCUMENTED_500: Counter[str] = Counter()


def built_document() -> dict[str, Any]:
    """The document the gateway serves, built from its app factory's router (as JSON says it)."""
    router = create_app(GatewaySettings()).router
    document: dict[str, Any] = orjson.loads(orjson.dumps(openapi.build_document(router)))
    return document


DOCUMENT = built_document()
SCHEMA = schemathesis.openapi.from_dict(DOCUMENT)
OPERATIONS = [
    (method.upper(), path, operation["x-corral-access"])
    for path, item in DOCUMENT["paths"].items()
    for method, operation in item.items()
]
CALLERS = ("anonymous", "user", "admin")
CASES = [(caller, *operation) for caller in CALLERS for operation in OPERATIONS]


def http(url: str, *, key: str | None = None, body: Any = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, method="GET" if body is None else "POST")
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    if body is not None:
        request.data = orjson.dumps(body)
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=ANSWER_TIMEOUT_S) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def fast_emulator(url: str, *, reset_only: bool = False) -> None:
    async with EmulatorControl(url) as control:
        await control.reset()
        if not reset_only:
            await control.configure(token_delay_ms=0, load_ms=0, prompt_ms_per_token=0)


@pytest.fixture(scope="module")
def gateway(new_cluster: ClusterFactory, emulator: Emulator) -> Iterator[Cluster]:
    asyncio.run(fast_emulator(emulator.url))
    with new_cluster(
        "openapi",
        whole=True,
        CORRAL_AUTH="on",
        CORRAL_ADMIN_KEY=ADMIN_KEY,
        CORRAL_RATE_LIMIT_PER_MINUTE="0",
        CORRAL_ANONYMOUS_RATE_LIMIT_PER_MINUTE="0",
        CORRAL_AUTH_FAILURES_PER_MINUTE="0",
    ) as cluster:
        yield cluster
    # The admin pass may have deleted, copied or created models: put the catalogue back.
    asyncio.run(fast_emulator(emulator.url, reset_only=True))


@pytest.fixture(scope="module")
def user_key(gateway: Cluster) -> str:
    status, created = http(
        f"{gateway.gateway_url}/admin/keys",
        key=ADMIN_KEY,
        body={"scope": "user", "label": "openapi fuzz"},
    )
    assert status == 201, created
    key: str = created["key"]
    return key


def test_the_gateway_serves_its_document(gateway: Cluster) -> None:
    status, served = http(f"{gateway.gateway_url}{openapi.OPENAPI_PATH}")
    assert status == 200, served
    assert served == DOCUMENT


# Ollama answers a pull, push or create that fails in the backend (a model the registry does not
# have, say) with 500 and the backend's text when it does not stream; Corral's native surface
# answers as Ollama does. The provider pull answers the same failure with 500 "Pull failed:
# <the backend's text>", in Corral's shape. Any other 5xx, or these elsewhere, is a failure.
OLLAMA_500 = frozenset({("POST", "/api/pull"), ("POST", "/api/push"), ("POST", "/api/create")})
PROVIDER_PULL = ("POST", "/api/providers/ollama/pull")


def documented_500(method: str, path: str, response: Response) -> bool:
    if response.status_code != 500 or (method, path) not in OLLAMA_500 | {PROVIDER_PULL}:
        return False
    try:
        body = response.json()
    except ValueError:
        return False
    if not isinstance(body, dict) or list(body) != ["error"]:
        return False
    error = body["error"]
    if (method, path) == PROVIDER_PULL:
        return (
            isinstance(error, dict)
            and error.get("type") == "backend_error"
            and str(error.get("message", "")).startswith("Pull failed: ")
        )
    # Not the edge's answer to a crash (surfaces.py).
    return isinstance(error, str) and error != "internal error"


def expect(caller: str, access: str, status: int) -> str | None:
    """What is wrong with `status` for this caller on a route with `access`, if anything."""
    if status >= 500:
        return "a server error"
    if access == "open":
        return None
    if caller == "anonymous" and status != 401:
        return "not 401 without a key"
    if caller == "user" and access == "admin" and status != 403:
        return "not 403 for a user key on an admin route"
    if caller != "anonymous" and status == 401:
        return "401 with a valid key"
    if caller == "admin" and status == 403:
        return "403 with the admin key"
    return None


@functools.cache
def generated(method: str, path: str) -> tuple[Case[Any], ...]:
    """The cases for one operation, made once and sent in every pass: valid requests and, where
    the operation has inputs, requests that break its schema."""
    operation = SCHEMA[path][method]
    # Pausing or draining the lane would hold every later case.
    fixed = {"action": "resume"} if path == "/admin/lane/{action}" else None
    strategies = [operation.as_strategy(GenerationMode.POSITIVE, path_parameters=fixed)]
    if operation.path_parameters or operation.query or operation.headers or operation.body:
        strategies.append(operation.as_strategy(GenerationMode.NEGATIVE, path_parameters=fixed))
    found: list[Case[Any]] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=st.one_of(strategies))
    def collect(case: Case[Any]) -> None:
        if fixed is None or case.path_parameters.get("action") == "resume":
            found.append(case)

    collect()
    return tuple(found)


@pytest.mark.parametrize(
    ("caller", "method", "path", "access"), CASES, ids=[f"{c[0]}-{c[1]} {c[2]}" for c in CASES]
)
def test_fuzz(
    request: pytest.FixtureRequest,
    gateway: Cluster,
    caller: str,
    method: str,
    path: str,
    access: str,
) -> None:
    credential = None
    if caller == "user":
        credential = ("Authorization", f"Bearer {request.getfixturevalue('user_key')}")
    elif caller == "admin":
        credential = ("X-API-Key", ADMIN_KEY)
    cases = generated(method, path)
    assert cases
    for generated_case in cases:
        headers = generated_case.headers.copy()
        # The made-up keys schemathesis sends for the security schemes stay in the anonymous
        # pass (they must be refused like no key); the others send the caller's key alone.
        if credential is not None:
            for name in AUTH_HEADERS:
                headers.pop(name, None)
            headers[credential[0]] = credential[1]
        case = generated_case.derive(headers=headers)
        TRIED[caller] += 1
        response = case.call(base_url=gateway.gateway_url, timeout=ANSWER_TIMEOUT_S)
        if documented_500(method, path, response):
            DOCUMENTED_500[path] += 1
            continue
        wrong = expect(caller, access, response.status_code)
        assert wrong is None, (
            f"{wrong}: {response.status_code} {response.text[:300]!r}\n{case.as_curl_command()}"
        )
        case.validate_response(response, checks=CHECKS)


def test_the_cluster_still_serves_after_fuzzing(
    gateway: Cluster, emulator: Emulator, user_key: str
) -> None:
    asyncio.run(fast_emulator(emulator.url))
    body = {"model": "llama3.2", "prompt": "hi", "stream": False}
    status, answer = http(f"{gateway.gateway_url}/api/generate", key=user_key, body=body)
    assert status == 200, answer
    assert answer["done"] is True
    print(f"\nopenapi fuzz: {dict(TRIED)} cases over {len(OPERATIONS)} operations")
    print(f"answered with a documented 500 (backend failures): {dict(DOCUMENTED_500)}")
    assert sum(TRIED.values()) >= len(CASES) * min(EXAMPLES, 2) // 2
