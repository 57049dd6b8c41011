"""Identity's pure parts: the client address behind trusted proxies, the key a request presents,
the key cache (TTL on an injected clock, single flight, eviction), rate-limit arithmetic, and the
startup checks."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from pydantic import SecretStr

from corral_common.contracts.identity import CounterValue, KeyInfo
from corral_gateway.identity.addresses import TrustedProxies, parse_address
from corral_gateway.identity.credentials import CredentialError, presented_key
from corral_gateway.identity.exposure import ExposureError, check_exposure
from corral_gateway.identity.key_cache import KeyCache
from corral_gateway.identity.limits import Allowance, BlockedAddresses, request_limit
from corral_gateway.identity.principal import Caller
from corral_gateway.settings import GatewaySettings

# --- client address ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("10.0.0.1", "10.0.0.1"),
        (" 10.0.0.1:8080 ", "10.0.0.1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("2001:db8::1", "2001:db8::1"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("unknown", None),
        ("", None),
    ],
)
def test_addresses_as_proxies_write_them(text: str, address: str | None) -> None:
    parsed = parse_address(text)
    assert (str(parsed) if parsed is not None else None) == address


def test_without_trusted_proxies_the_peer_is_the_client() -> None:
    proxies = TrustedProxies.parse("")
    assert proxies.client_address("10.0.0.5", ["1.2.3.4"]) == "10.0.0.5"
    assert proxies.client_address(None) == "unknown"


def test_behind_trusted_proxies_the_right_most_untrusted_address_is_the_client() -> None:
    proxies = TrustedProxies.parse("10.0.0.0/8, 192.168.1.1")
    # The client lied about its own address (1.1.1.1); the proxy appended what it saw.
    assert proxies.client_address("10.0.0.2", ["1.1.1.1, 203.0.113.9"]) == "203.0.113.9"
    # Two proxies, two headers: the walk goes across them, right to left.
    assert proxies.client_address("10.0.0.2", ["1.1.1.1, 203.0.113.9", "192.168.1.1"]) == (
        "203.0.113.9"
    )
    # A peer that is no trusted proxy: its header is not believed.
    assert proxies.client_address("198.51.100.1", ["203.0.113.9"]) == "198.51.100.1"
    # Nothing forwarded, or only proxies: the left-most one seen.
    assert proxies.client_address("10.0.0.2", []) == "10.0.0.2"
    assert proxies.client_address("10.0.0.2", ["10.1.1.1"]) == "10.1.1.1"
    # Garbage ends the walk at the proxy that passed it on.
    assert proxies.client_address("10.0.0.2", ["203.0.113.9, nonsense"]) == "10.0.0.2"


def test_a_trusted_proxy_setting_that_is_no_address_is_refused() -> None:
    with pytest.raises(ValueError, match=r"CORRAL_TRUSTED_PROXIES: 'proxy\.local'"):
        TrustedProxies.parse("10.0.0.1, proxy.local")


# --- presented keys ----------------------------------------------------------------------


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


@pytest.mark.parametrize(
    ("given", "key"),
    [
        ((), None),
        ((("Authorization", "Bearer abc"),), "abc"),
        ((("authorization", "bearer   abc  "),), "abc"),
        ((("X-API-Key", " abc "),), "abc"),
        ((("Authorization", "Bearer abc"), ("X-Api-Key", "abc")), "abc"),
    ],
)
def test_a_key_from_either_header(given: tuple[tuple[str, str], ...], key: str | None) -> None:
    assert presented_key(headers(*given)) == key


@pytest.mark.parametrize(
    ("given", "reason"),
    [
        ((("Authorization", "Basic dXNlcjpwYXNz"),), "malformed"),
        ((("Authorization", "Bearer"),), "malformed"),
        ((("Authorization", "Bearer "),), "malformed"),
        ((("X-API-Key", "  "),), "malformed"),
        ((("Authorization", "Bearer a"), ("X-API-Key", "b")), "conflicting"),
        ((("X-API-Key", "a"), ("X-API-Key", "a")), "conflicting"),
    ],
)
def test_what_is_not_one_key_is_refused(given: tuple[tuple[str, str], ...], reason: str) -> None:
    with pytest.raises(CredentialError) as refused:
        presented_key(headers(*given))
    assert refused.value.reason == reason
    assert "dXNlcjpwYXNz" not in refused.value.message


# --- the key cache -----------------------------------------------------------------------


class Ticks:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def key_info(key_id: str = "key_1") -> KeyInfo:
    return KeyInfo(id=key_id, prefix="crl_abcdefgh", scope="user", created_at=0.0)


class Resolver:
    """The store's answers, each lookup held until the test lets it through."""

    def __init__(self, answers: dict[str, KeyInfo | None]) -> None:
        self.answers = answers
        self.asked: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()
        # Set once a lookup has reached the store (and waits at the gate).
        self.reached = asyncio.Event()
        self.error: Exception | None = None

    async def __call__(self, key_hash: str) -> KeyInfo | None:
        self.asked.append(key_hash)
        self.reached.set()
        await self.gate.wait()
        if self.error is not None:
            raise self.error
        return self.answers.get(key_hash)


async def test_found_keys_are_kept_for_the_ttl_and_unknown_ones_briefly() -> None:
    ticks = Ticks()
    resolver = Resolver({"h1": key_info()})
    cache = KeyCache(resolver, ttl_s=5.0, unknown_ttl_s=1.0, clock=ticks)
    assert await cache.get("h1") == key_info()
    assert await cache.get("nope") is None
    ticks.now += 0.9
    assert await cache.get("h1") == key_info()
    assert await cache.get("nope") is None
    assert resolver.asked == ["h1", "nope"]
    ticks.now += 0.2
    assert await cache.get("nope") is None
    assert resolver.asked == ["h1", "nope", "nope"]
    ticks.now += 4.0
    await cache.get("h1")
    assert resolver.asked.count("h1") == 2


async def test_concurrent_lookups_of_one_key_are_one_and_survive_a_leaving_client() -> None:
    resolver = Resolver({"h1": key_info()})
    resolver.gate.clear()
    cache = KeyCache(resolver, ttl_s=5.0, clock=Ticks())
    first = asyncio.create_task(cache.get("h1"))
    others = [asyncio.create_task(cache.get("h1")) for _ in range(3)]
    await resolver.reached.wait()
    first.cancel()
    resolver.gate.set()
    assert await asyncio.gather(*others) == [key_info()] * 3
    assert resolver.asked == ["h1"]
    assert cache.cached("h1") == (True, key_info())


async def test_a_failed_lookup_reaches_every_waiter_and_is_not_remembered() -> None:
    resolver = Resolver({"h1": key_info()})
    resolver.error = ConnectionError("store down")
    resolver.gate.clear()
    cache = KeyCache(resolver, ttl_s=5.0, clock=Ticks())
    waiters = [asyncio.create_task(cache.get("h1")) for _ in range(2)]
    await resolver.reached.wait()
    resolver.gate.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    resolver.error = None
    assert await cache.get("h1") == key_info()
    assert resolver.asked == ["h1", "h1"]


async def test_an_evicted_key_is_looked_up_again_and_a_stale_lookup_is_not_kept() -> None:
    resolver = Resolver({"h1": key_info()})
    cache = KeyCache(resolver, ttl_s=60.0, clock=Ticks())
    await cache.get("h1")
    cache.evict("h1")
    assert cache.cached("h1") == (False, None)
    # Evicted while a lookup is under way: its waiter gets the answer, nobody keeps it.
    resolver.gate.clear()
    resolver.reached.clear()
    under_way = asyncio.create_task(cache.get("h1"))
    await resolver.reached.wait()
    cache.evict("h1")
    resolver.answers["h1"] = None
    resolver.gate.set()
    assert await under_way is None
    assert cache.cached("h1") == (False, None)
    assert resolver.asked == ["h1", "h1"]


async def test_the_cache_is_bounded() -> None:
    cache = KeyCache(Resolver({}), ttl_s=60.0, clock=Ticks(), capacity=3)
    for n in range(5):
        await cache.get(f"h{n}")
    assert len(cache) == 3
    assert cache.cached("h0") == (False, None)
    assert cache.cached("h4") == (True, None)


# --- limits ------------------------------------------------------------------------------


def test_a_keys_own_limit_wins_over_the_defaults() -> None:
    anonymous = Caller(scope=None, address="10.0.0.1")
    keyed = Caller(scope="user", address="10.0.0.1", key_id="key_1")
    assert request_limit(anonymous, 120, 60) == 60
    assert request_limit(keyed, 120, 60) == 120
    own = Caller(
        scope="user",
        address="10.0.0.1",
        key_id="key_1",
        limits=keyed.limits.model_copy(update={"requests_per_minute": 0}),
    )
    assert request_limit(own, 120, 60) == 0


def test_allowance_headers_count_down_to_the_window_end() -> None:
    counter = CounterValue(name="requests", count=3, reset_at=1_700_000_040.0)
    allowance = Allowance.of(5, counter)
    assert not allowance.exceeded
    assert allowance.headers() == {
        "X-RateLimit-Limit": "5",
        "X-RateLimit-Remaining": "2",
        "X-RateLimit-Reset": "1700000040",
    }
    over = Allowance.of(5, counter.model_copy(update={"count": 6}))
    assert over.exceeded and over.remaining == 0


def test_an_address_is_blocked_past_its_failures_until_the_window_ends() -> None:
    ticks = Ticks()
    blocked = BlockedAddresses(limit=3, wall=ticks)

    def failures(count: int) -> CounterValue:
        return CounterValue(name="auth_failures", count=count, reset_at=160.0)

    assert not blocked.note("10.0.0.1", failures(3))
    assert blocked.blocked_until("10.0.0.1") is None
    assert blocked.note("10.0.0.1", failures(4))
    assert blocked.blocked_until("10.0.0.1") == 160.0
    assert blocked.blocked_until("10.0.0.2") is None
    ticks.now = 160.0
    assert blocked.blocked_until("10.0.0.1") is None
    assert not BlockedAddresses(limit=0).note("10.0.0.1", failures(1000))


# --- startup checks ----------------------------------------------------------------------


def settings(**values: Any) -> GatewaySettings:
    return GatewaySettings.model_validate(values)


def test_auth_off_beyond_loopback_refuses_to_start_unless_allowed() -> None:
    with pytest.raises(ExposureError, match="CORRAL_AUTH=off") as refused:
        check_exposure(settings(gateway_host="0.0.0.0"))
    assert "CORRAL_ALLOW_OPEN" in str(refused.value)
    warnings = check_exposure(settings(gateway_host="0.0.0.0", allow_open=True))
    assert any("without API keys" in w for w in warnings)
    assert check_exposure(settings(gateway_host="127.0.0.1")) == []
    assert check_exposure(settings(gateway_host="::1")) == []
    assert check_exposure(settings(gateway_host="0.0.0.0", auth="on", admin_key="x" * 32)) == []


def test_a_short_operator_key_refuses_to_start_without_showing_it() -> None:
    short = "s3cr3t-but-short"
    with pytest.raises(ExposureError, match="at least 32") as refused:
        check_exposure(settings(auth="on", admin_key=short))
    assert short not in str(refused.value)
    assert check_exposure(settings(auth="on", admin_key="x" * 32)) == []


def test_auth_on_without_an_operator_key_says_how_to_get_one() -> None:
    [warning] = check_exposure(settings(auth="on"))
    assert "CORRAL_ADMIN_KEY" in warning and "POST /admin/keys" in warning
    [empty] = check_exposure(settings(auth="on", admin_key=""))
    assert empty == warning


def test_unreadable_trusted_proxies_refuse_to_start() -> None:
    with pytest.raises(ExposureError, match="CORRAL_TRUSTED_PROXIES"):
        check_exposure(settings(trusted_proxies="lb.example.com"))


def test_the_operator_key_never_shows_in_settings_dumps() -> None:
    secret = "operator-" + "z" * 40
    shown = settings(auth="on", admin_key=secret)
    assert isinstance(shown.admin_key, SecretStr)
    for text in (repr(shown), str(shown), shown.model_dump_json(), str(shown.model_dump())):
        assert secret not in text
