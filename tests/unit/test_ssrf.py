"""Which destinations webhook.deliver refuses: address classification and the resolver check.

No network: literal addresses never reach the resolver, numeric forms and `localhost` resolve
locally (inet_aton, /etc/hosts), and every other name goes through a monkeypatched `resolve`.
"""

from __future__ import annotations

import ipaddress
import socket

import httpx
import pytest

from jobqueue.builtins import webhook
from jobqueue.builtins.webhook import DeliveryFailed, check_destination, refusal_reason
from jobqueue.errors import PermanentError

REFUSED = {
    "127.0.0.1": "loopback",
    "127.255.0.9": "loopback",
    "10.0.0.5": "private",
    "172.16.3.4": "private",
    "192.168.1.1": "private",
    "169.254.169.254": "link-local",  # cloud metadata endpoint
    "100.64.0.1": "carrier-grade NAT",
    "100.127.255.254": "carrier-grade NAT",
    "0.0.0.0": "unspecified",
    "224.0.0.1": "multicast",
    "239.255.255.250": "multicast",
    "240.0.0.1": "reserved",
    "255.255.255.255": "reserved",  # limited broadcast
    "192.0.2.10": "private",  # TEST-NET-1: documentation, never routed
    "::1": "loopback",
    "::": "unspecified",
    "fe80::1": "link-local",
    "fec0::1": "site-local",
    "fc00::1": "private",  # unique local (ULA)
    "fd12:3456::1": "private",
    "ff02::1": "multicast",
    "::ffff:127.0.0.1": "loopback",  # IPv4-mapped
    "::ffff:10.0.0.1": "private",
    "::ffff:169.254.169.254": "link-local",
    "2002:7f00:1::": "loopback",  # 6to4 wrapping 127.0.0.1
    "64:ff9b::a9fe:a9fe": "link-local",  # NAT64 wrapping 169.254.169.254
    "2001:db8::1": "private",  # documentation prefix
}
ALLOWED = ["93.184.216.34", "8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "2002:808:808::"]


@pytest.mark.parametrize(("address", "reason"), sorted(REFUSED.items()))
def test_non_public_addresses_are_refused_with_their_reason(address: str, reason: str) -> None:
    got = refusal_reason(ipaddress.ip_address(address))
    assert got is not None and got.startswith(reason)


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_are_allowed(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) is None


@pytest.fixture
def answers(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """name -> addresses for a fake resolver; names missing from it fail like NXDOMAIN."""
    table: dict[str, list[str]] = {}

    async def fake_resolve(host: str, port: int) -> list[webhook.IPAddress]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [ipaddress.ip_address(a) for a in table[host]]

    monkeypatch.setattr(webhook, "resolve", fake_resolve)
    return table


async def test_name_resolving_to_private_address_is_refused(answers: dict[str, list[str]]) -> None:
    answers["intranet.example.com"] = ["10.1.2.3"]
    with pytest.raises(PermanentError, match=r"intranet\.example\.com: 10\.1\.2\.3 is a private address"):
        await check_destination(httpx.URL("https://intranet.example.com/hook"))


async def test_one_private_answer_among_public_ones_is_enough_to_refuse(answers: dict[str, list[str]]) -> None:
    # The connection may use any of the answers, so all of them must be public.
    answers["mixed.example.com"] = ["93.184.216.34", "2606:4700::1", "127.0.0.1"]
    with pytest.raises(PermanentError, match="loopback"):
        await check_destination(httpx.URL("https://mixed.example.com/hook"))


async def test_public_name_passes(answers: dict[str, list[str]]) -> None:
    answers["hooks.example.com"] = ["93.184.216.34", "2606:4700::1"]
    await check_destination(httpx.URL("https://hooks.example.com/hook"))


async def test_unresolvable_name_is_a_retryable_failure(answers: dict[str, list[str]]) -> None:
    with pytest.raises(DeliveryFailed, match=r"could not resolve nxdomain\.example\.com"):
        await check_destination(httpx.URL("https://nxdomain.example.com/hook"))


async def test_literal_ip_is_judged_without_the_resolver(answers: dict[str, list[str]]) -> None:
    # `answers` is empty, so a resolver call would raise DeliveryFailed instead.
    with pytest.raises(PermanentError, match="link-local"):
        await check_destination(httpx.URL("http://169.254.169.254/latest/meta-data/"))
    with pytest.raises(PermanentError, match="loopback"):
        await check_destination(httpx.URL("http://[::1]:8080/hook"))


async def test_idna_host_is_resolved_in_its_ascii_form(answers: dict[str, list[str]]) -> None:
    answers["xn--bcher-kva.example"] = ["10.9.9.9"]
    with pytest.raises(PermanentError, match="private"):
        await check_destination(httpx.URL("https://bücher.example/hook"))


@pytest.mark.parametrize("host", ["localhost", "127.1", "2130706433", "0x7f.0.0.1"])
async def test_real_resolver_sees_through_loopback_spellings(host: str) -> None:
    # Shorthand and integer forms are not IP literals to `ipaddress`, but the OS resolver (which
    # the HTTP client uses too) maps them to 127.0.0.1; `localhost` comes from /etc/hosts.
    with pytest.raises(PermanentError, match="loopback"):
        await check_destination(httpx.URL(f"http://{host}:8080/hook"))
