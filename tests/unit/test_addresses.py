"""Tests of ``_addresses``: which URLs imageproc may connect to (server-side request forgery)."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, ip_address, ip_network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imageproc import InvalidInput, UnsafeURL
from imageproc._addresses import MAX_URL_LENGTH, Address, AddressPolicy, Target
from tests.support.strategies import FOREIGN_ZEROS, foreign_digits, ipv4_spellings

POLICY = AddressPolicy()

# Each hostile URL, and what the refusal must say about it.
HOSTILE = [
    ("http://127.0.0.1", "127.0.0.1 is a loopback address"),
    ("http://[::1]", "::1 is a loopback address"),
    ("http://[::ffff:127.0.0.1]", "an IPv4-mapped loopback address (127.0.0.1)"),
    ("http://[::ffff:7f00:1]", "an IPv4-mapped loopback address (127.0.0.1)"),
    ("http://[::127.0.0.1]", "an IPv4-compatible loopback address (127.0.0.1)"),
    ("http://169.254.169.254/latest/meta-data", "a link-local address (cloud metadata)"),
    ("http://[fd00:ec2::254]", "fd00:ec2::254 is a private address (cloud metadata)"),
    ("http://100.100.100.200", "a shared address (cloud metadata)"),
    ("http://100.64.0.1", "a shared address (carrier-grade NAT)"),
    ("http://0.0.0.0", "0.0.0.0 is an unspecified address"),
    ("http://[::]", ":: is an unspecified address"),
    ("http://10.1.2.3", "10.1.2.3 is a private address"),
    ("http://192.168.0.1", "192.168.0.1 is a private address"),
    ("http://172.16.0.1", "172.16.0.1 is a private address"),
    ("http://[fc00::1]", "fc00::1 is a private address"),
    ("http://[fe80::1]", "fe80::1 is a link-local address"),
    ("http://224.0.0.1", "224.0.0.1 is a multicast address"),
    ("http://[ff02::1]", "ff02::1 is a multicast address"),
    ("http://255.255.255.255", "a broadcast address"),
    ("http://240.0.0.1", "a reserved address"),
    ("http://192.0.2.1", "a documentation address"),
    ("http://[2002:7f00:1::]", "a 6to4 loopback address (127.0.0.1)"),
    ("http://[64:ff9b::7f00:1]", "a NAT64 loopback address (127.0.0.1)"),
    # Teredo: server 65.54.227.120, client 10.0.0.1 (stored inverted, 0xf5ffffff).
    ("http://[2001:0:4136:e378:8000:63bf:f5ff:fffe]", "a Teredo private address (10.0.0.1)"),
    ("http://2130706433", "2130706433 is 127.0.0.1, a loopback address"),
    ("http://0x7f000001", "0x7f000001 is 127.0.0.1, a loopback address"),
    ("http://0x7f.1", "0x7f.1 is 127.0.0.1, a loopback address"),
    ("http://127.1", "127.1 is 127.0.0.1, a loopback address"),
    ("http://0177.0.0.1/", "0177.0.0.1 is 127.0.0.1, a loopback address"),
    ("http://127.0.0.1./", "127.0.0.1. is 127.0.0.1, a loopback address"),
    ("http://0x/", "0x is 0.0.0.0, an unspecified address"),
    ("file:///etc/passwd", "must be http:// or https://, not file"),
    ("gopher://x", "not gopher"),
    ("ftp://x", "not ftp"),
    ("javascript:alert(1)", "not javascript"),
    ("//example.com/", "not schemeless"),
    ("http://user:pw@example.com", "a user name or password"),
    ("http://@example.com", "a user name or password"),
    ("http://localhost:8000", "localhost names this machine"),
    ("http://foo.localhost", "foo.localhost names this machine"),
    ("http://LocalHost./", "localhost. names this machine"),
    ("http:///x", "names no host"),
    ("http:example.com", "names no host"),
    ("http://%31%32%37.0.0.1/", "is not a valid host name"),
    ("http://a..b/", "a..b is not a valid host name"),
    ("http://exa_mple-.com/", "is not a valid host name"),
    ("http://256.0.0.1/", "neither a host name nor an IPv4 address"),
    ("http://08.0.0.1/", "neither a host name nor an IPv4 address"),
    ("http://1.2.3.4.5/", "neither a host name nor an IPv4 address"),
    ("http://7f.0.0.1/", "neither a host name nor an IPv4 address"),
    ("http://[fe80::1%25eth0]/", "an IPv6 zone (%) is refused"),
    ("http://[::1/", "is not a valid URL"),
    ("http://[::1]x/", "[::1]x is not [IPv6 address] or [IPv6 address]:port"),
    ("http://[1.2.3.4]/", "callback URL"),
    ("http://example.com:0/", "the port must be a number from 1 to 65535"),
    ("http://example.com:65536/", "the port must be a number from 1 to 65535"),
    ("http://example.com:/", "the port must be a number from 1 to 65535"),
    ("http://example.com:8o/", "the port must be a number from 1 to 65535"),
    ("http://example.com:80:80/", "the port must be a number from 1 to 65535"),
    ("http://example.com\\@127.0.0.1/", "a backslash (U+005C at character 19)"),
]


@pytest.mark.parametrize(("url", "says"), HOSTILE)
def test_hostile_urls_are_refused_saying_why(url: str, says: str) -> None:
    with pytest.raises(UnsafeURL) as refused:
        POLICY.check_url(url, what="callback URL")
    assert says in refused.value.message
    assert refused.value.message.startswith("callback URL")
    assert isinstance(refused.value, InvalidInput)
    assert refused.value.code == "unsafe_url"
    assert refused.value.transient is False


def test_a_refusal_names_the_host_but_not_the_path_query_or_password() -> None:
    # Webhook URLs carry their secret in the path or query; messages end up in logs.
    with pytest.raises(UnsafeURL) as refused:
        POLICY.check_url("http://127.0.0.1:8000/hooks/s3cret?token=t0ken")
    assert refused.value.message == (
        "URL http://127.0.0.1:8000: 127.0.0.1 is a loopback address; allowlist it to connect there"
    )
    with pytest.raises(UnsafeURL) as refused:
        POLICY.check_url("http://user:pa55word@example.com/")
    assert "pa55word" not in refused.value.message
    assert "http://example.com" in refused.value.message


def test_malformed_urls_keep_the_low_level_error_as_the_cause() -> None:
    with pytest.raises(UnsafeURL) as refused:
        POLICY.check_url("http://[::1/")
    assert isinstance(refused.value.__cause__, ValueError)
    with pytest.raises(UnsafeURL) as refused:
        POLICY.check_url("http://a..b/")
    assert isinstance(refused.value.__cause__, ValueError)


ACCEPTED = [
    (
        "https://example.com/hook?a=1",
        Target("https://example.com/hook?a=1", "https", "example.com", 443, "/hook?a=1", None),
    ),
    (
        "http://93.184.216.34:8080/x",
        Target(
            "http://93.184.216.34:8080/x",
            "http",
            "93.184.216.34",
            8080,
            "/x",
            IPv4Address("93.184.216.34"),
        ),
    ),
    (
        "http://[2606:4700::1111]/",
        Target(
            "http://[2606:4700::1111]/",
            "http",
            "2606:4700::1111",
            80,
            "/",
            IPv6Address("2606:4700::1111"),
        ),
    ),
    # Scheme and host lower case, the fragment dropped, an empty path and query made "/".
    (
        "HTTPS://Hooks.Example.COM?#frag",
        Target("https://hooks.example.com/", "https", "hooks.example.com", 443, "/", None),
    ),
    (
        "http://example.com:0443/a/b#x?y",
        Target("http://example.com:443/a/b", "http", "example.com", 443, "/a/b", None),
    ),
    # International names are IDNA-encoded, the encoded name is what the URL carries.
    (
        "https://b\u00fccher.example/caf\u00e9",
        Target(
            "https://xn--bcher-kva.example/caf\u00e9",
            "https",
            "xn--bcher-kva.example",
            443,
            "/caf\u00e9",
            None,
        ),
    ),
    # Any spelling of a public IPv4 address is read as it and written as a dotted quad.
    (
        "http://0x5db8d822:1/",
        Target(
            "http://93.184.216.34:1/", "http", "93.184.216.34", 1, "/", IPv4Address("93.184.216.34")
        ),
    ),
    (
        "http://[::FFFF:93.184.216.34]:65535/",
        Target(
            "http://[::ffff:5db8:d822]:65535/",
            "http",
            "::ffff:5db8:d822",
            65535,
            "/",
            IPv6Address("::ffff:93.184.216.34"),
        ),
    ),
    (
        "http://under_score.internal./",
        Target("http://under_score.internal./", "http", "under_score.internal.", 80, "/", None),
    ),
]


@pytest.mark.parametrize(("url", "target"), ACCEPTED)
def test_safe_urls_are_read_into_their_parts(url: str, target: Target) -> None:
    assert POLICY.check_url(url) == target


def test_fullwidth_digits_spell_the_same_address() -> None:
    # IDNA maps fullwidth digits and dots to ASCII ones: the name is checked after mapping.
    host = foreign_digits("127.0.0.1").replace(".", "\uff0e")
    with pytest.raises(UnsafeURL, match=r"is 127\.0\.0\.1, a loopback address"):
        POLICY.check_url(f"http://{host}/")


@pytest.mark.parametrize("zero", FOREIGN_ZEROS)
def test_ports_are_ascii_digits(zero: int) -> None:
    assert POLICY.check_url("http://example.com:8080/").port == 8080
    with pytest.raises(UnsafeURL, match="the port must be"):
        POLICY.check_url(f"http://example.com:{foreign_digits('8080', zero)}/")


@pytest.mark.parametrize(
    "char", [" ", "\t", "\n", "\r", "\x00", "\x1b", "\x7f", "\x85", "\u00a0", "\u200b", "\u2028"]
)
@pytest.mark.parametrize("where", [0, 7, 15, 22])
def test_whitespace_and_control_characters_are_refused_anywhere(char: str, where: int) -> None:
    url = "https://example.com/a?b=c"
    with pytest.raises(UnsafeURL, match=f"U\\+{ord(char):04X} at character {where + 1}"):
        POLICY.check_url(url[:where] + char + url[where:])


def test_urls_up_to_the_length_limit_are_accepted() -> None:
    prefix = "https://example.com/"
    longest = prefix + "a" * (MAX_URL_LENGTH - len(prefix))
    assert POLICY.check_url(longest).url == longest
    with pytest.raises(UnsafeURL, match=f"2049 characters long, more than {MAX_URL_LENGTH}"):
        POLICY.check_url(longest + "a")


def _accepted(policy: AddressPolicy, url: str) -> bool:
    try:
        policy.check_url(url)
    except UnsafeURL:
        return False
    return True


#: IANA's special-purpose IPv4 ranges (RFC 6890 and its updates) that are not globally
#: reachable, multicast and the reserved block: written out here, not taken from the module
#: or from ipaddress, whose tables differ between Python releases.
NOT_PUBLIC_V4 = [
    ip_network("0.0.0.0/8"),
    ip_network("10.0.0.0/8"),
    ip_network("100.64.0.0/10"),
    ip_network("127.0.0.0/8"),
    ip_network("169.254.0.0/16"),
    ip_network("172.16.0.0/12"),
    ip_network("192.0.0.0/24"),
    ip_network("192.0.2.0/24"),
    ip_network("192.88.99.0/24"),
    ip_network("192.168.0.0/16"),
    ip_network("198.18.0.0/15"),
    ip_network("198.51.100.0/24"),
    ip_network("203.0.113.0/24"),
    ip_network("224.0.0.0/4"),
    ip_network("240.0.0.0/4"),
]


@given(st.ip_addresses(v=4))
def test_an_ipv4_address_is_accepted_iff_it_is_in_no_special_purpose_range(
    address: IPv4Address,
) -> None:
    public = not any(address in network for network in NOT_PUBLIC_V4)
    assert _accepted(POLICY, f"http://{address}/") == public


@pytest.mark.parametrize("network", NOT_PUBLIC_V4, ids=str)
def test_every_special_purpose_range_is_refused_at_its_edges(network: IPv4Network) -> None:
    for address in (network.network_address, network.broadcast_address):
        assert not _accepted(POLICY, f"http://{address}/")


@given(st.ip_addresses(v=4))
def test_an_ipv4_mapped_address_gets_the_verdict_of_its_ipv4_address(address: IPv4Address) -> None:
    assert _accepted(POLICY, f"http://[::ffff:{address}]/") == _accepted(
        POLICY, f"http://{address}/"
    )


@given(ipv4_spellings())
def test_every_spelling_of_an_ipv4_address_gets_its_verdict(
    spelling: tuple[str, IPv4Address],
) -> None:
    text, address = spelling
    if not any(address in network for network in NOT_PUBLIC_V4):
        target = POLICY.check_url(f"http://{text}/")
        assert (target.host, target.literal) == (str(address), address)
    else:
        # The message says which address the spelling means (unless it is the dotted quad).
        says = f"{text} is {address}, " if text != str(address) else f"{address} is "
        with pytest.raises(UnsafeURL, match=re.escape(says)):
            POLICY.check_url(f"http://{text}/")


@given(st.ip_addresses(v=6))
def test_an_accepted_ipv6_address_and_any_ipv4_address_in_it_are_public(
    address: IPv6Address,
) -> None:
    if not _accepted(POLICY, f"http://[{address}]/"):
        return
    inner = [
        address.ipv4_mapped,
        address.sixtofour,
        *(address.teredo or ()),
        IPv4Address(int(address) & 0xFFFFFFFF) if str(address).startswith("64:ff9b::") else None,
    ]
    assert all(a.is_global and not a.is_multicast for a in inner if a is not None)
    if address.ipv4_mapped is None and not str(address).startswith("64:ff9b::"):
        assert address.is_global
        assert not address.is_multicast
        assert not address.is_link_local
        assert not address.is_site_local


@given(st.text(max_size=80) | st.text(max_size=60).map("http://".__add__))
def test_any_text_is_a_target_or_unsafe_url(text: str) -> None:
    # Never another exception, and never a target that is not http(s) with a host.
    try:
        target = POLICY.check_url(text)
    except UnsafeURL:
        return
    assert target.scheme in {"http", "https"}
    assert target.host
    assert target.url == f"{target.url.removesuffix(target.path)}{target.path}"


# -- the allowlist ------------------------------------------------------------------------------


@pytest.mark.parametrize("allow", ["127.0.0.1", "127.0.0.0/8", "10.0.0.0/8, 127.0.0.1"])
def test_an_allowlisted_network_accepts_its_addresses_only(allow: str) -> None:
    policy = AddressPolicy.from_text(allow)
    assert policy.check_url("http://127.0.0.1:8000/").literal == IPv4Address("127.0.0.1")
    assert policy.check_url("http://[::ffff:127.0.0.1]:8000/").port == 8000
    with pytest.raises(UnsafeURL, match=r"192\.168\.0\.1 is a private address"):
        policy.check_url("http://192.168.0.1/")
    with pytest.raises(UnsafeURL, match="localhost names this machine"):
        policy.check_url("http://localhost:8000/")


def test_an_allowlisted_network_does_not_cover_its_neighbours() -> None:
    policy = AddressPolicy(("127.0.0.1", "::1"))
    assert _accepted(policy, "http://[::1]/")
    assert not _accepted(policy, "http://127.0.0.2/")
    assert not _accepted(policy, "http://[::2]/")


def test_an_allowlisted_name_accepts_the_name_and_whatever_it_resolves_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    policy = AddressPolicy(("LocalHost",))
    target = policy.check_url("http://localhost:8000")
    assert target == Target("http://localhost:8000/", "http", "localhost", 8000, "/", None)
    assert policy.check_url("http://LOCALHOST.:8000/").host == "localhost."
    fake_dns(monkeypatch, {"localhost": ["127.0.0.1", "::1", "127.0.0.1"]})
    assert policy.resolve(target) == [ip_address("127.0.0.1"), ip_address("::1")]
    # The name, not the address: another name for the same addresses is still refused.
    assert not _accepted(policy, "http://foo.localhost/")
    assert not _accepted(policy, "http://127.0.0.1/")


def test_the_real_localhost_resolves_to_loopback_when_allowlisted() -> None:
    resolved = AddressPolicy(("localhost",)).resolve(
        AddressPolicy(("localhost",)).check_url("http://localhost/")
    )
    assert resolved
    assert all(address.is_loopback for address in resolved)


def test_allowlist_text_is_split_on_commas_and_spaces() -> None:
    policy = AddressPolicy.from_text(" hooks.internal, 10.0.0.0/8  127.0.0.1,,::1/128\n")
    assert policy.allow == ("hooks.internal", "10.0.0.0/8", "127.0.0.1", "::1/128")
    assert AddressPolicy.from_text("") == AddressPolicy()


@pytest.mark.parametrize(
    "entry",
    [
        "10.0.0.1/8",
        "127.1",
        "0X7F000001",
        "10.0.0.1.",
        "[::1]",
        "*.internal",
        "a..b",
        "10.0.0.0/33",
    ],
)
def test_a_bad_allowlist_entry_is_a_value_error_naming_it(entry: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"allowlist entry '{entry}'")):
        AddressPolicy.from_text(f"ok.example, {entry}")


def test_allow_must_be_a_tuple_not_text() -> None:
    with pytest.raises(TypeError, match="from_text"):
        AddressPolicy("10.0.0.0/8")  # type: ignore[arg-type]


# -- resolution ---------------------------------------------------------------------------------


def fake_dns(monkeypatch: pytest.MonkeyPatch, records: dict[str, list[str]]) -> list[str]:
    """Answer socket.getaddrinfo from ``records``; returns the list of names asked for."""
    asked: list[str] = []

    def getaddrinfo(host: str, port: int, *args: object, **kwargs: object) -> list[object]:
        asked.append(host)
        if host not in records:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (a, port, 0, 0))
            if ":" in a
            else (socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in records[host]
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def run_sync(policy: AddressPolicy, target: Target) -> list[Address]:
    return policy.resolve(target)


def run_async(policy: AddressPolicy, target: Target) -> list[Address]:
    return asyncio.run(policy.resolve_async(target))


both_ways = pytest.mark.parametrize("resolve", [run_sync, run_async], ids=["sync", "async"])
Resolve = Callable[[AddressPolicy, Target], list[Address]]


@both_ways
def test_public_addresses_are_returned_in_order_without_repeats(
    monkeypatch: pytest.MonkeyPatch, resolve: Resolve
) -> None:
    asked = fake_dns(
        monkeypatch, {"hooks.example.com": ["2606:4700::1111", "93.184.216.34", "2606:4700::1111"]}
    )
    target = POLICY.check_url("https://hooks.example.com/x")
    assert resolve(POLICY, target) == [ip_address("2606:4700::1111"), ip_address("93.184.216.34")]
    assert asked == ["hooks.example.com"]


@both_ways
@pytest.mark.parametrize(
    ("private", "says"),
    [
        ("10.0.0.1", "resolves to 10.0.0.1, a private address"),
        ("169.254.169.254", "resolves to 169.254.169.254, a link-local address (cloud metadata)"),
        ("::ffff:127.0.0.1", "an IPv4-mapped loopback address (127.0.0.1)"),
        ("fd00:ec2::254", "a private address (cloud metadata)"),
    ],
)
def test_one_refused_address_refuses_the_target(
    monkeypatch: pytest.MonkeyPatch, resolve: Resolve, private: str, says: str
) -> None:
    fake_dns(monkeypatch, {"rebind.example.com": ["93.184.216.34", private]})
    target = POLICY.check_url("https://rebind.example.com/hook?secret=s")
    with pytest.raises(UnsafeURL) as refused:
        resolve(POLICY, target)
    assert refused.value.message.startswith("URL https://rebind.example.com: rebind.example.com")
    assert says in refused.value.message
    assert "secret" not in refused.value.message
    assert refused.value.transient is False
    # The allowlist decides: the same answer passes once the address is allowed.
    allowing = AddressPolicy((private,))
    assert resolve(allowing, target)[-1] == ip_address(private)


@both_ways
def test_a_name_that_does_not_resolve_is_a_transient_unsafe_url(
    monkeypatch: pytest.MonkeyPatch, resolve: Resolve
) -> None:
    fake_dns(monkeypatch, {"empty.example.com": []})
    for host in ["missing.example.com", "empty.example.com"]:
        with pytest.raises(UnsafeURL, match=f"{host} does not resolve") as refused:
            resolve(POLICY, POLICY.check_url(f"http://{host}/"))
        assert refused.value.transient is True
    with pytest.raises(UnsafeURL) as refused:
        resolve(POLICY, POLICY.check_url("http://missing.example.com/"))
    assert isinstance(refused.value.__cause__, socket.gaierror)


@both_ways
def test_an_ip_literal_is_checked_without_dns(
    monkeypatch: pytest.MonkeyPatch, resolve: Resolve
) -> None:
    asked = fake_dns(monkeypatch, {})
    target = POLICY.check_url("http://93.184.216.34/")
    assert resolve(POLICY, target) == [IPv4Address("93.184.216.34")]
    # A target accepted under one policy is checked again under the one resolving it.
    loopback = AddressPolicy(("127.0.0.1",)).check_url("http://127.0.0.1/")
    with pytest.raises(UnsafeURL, match=r"127\.0\.0\.1 is a loopback address"):
        resolve(POLICY, loopback)
    assert asked == []


@both_ways
def test_the_real_localhost_is_refused_by_resolution(resolve: Resolve) -> None:
    # check_url refuses localhost statically; resolution refuses it again on its addresses.
    target = Target("http://localhost/", "http", "localhost", 80, "/", None)
    with pytest.raises(UnsafeURL, match=r"localhost resolves to [0-9a-f.:]+, a loopback address"):
        resolve(POLICY, target)


def test_check_address_allows_public_addresses_and_names_the_refused() -> None:
    target = POLICY.check_url("https://hooks.example.com/")
    POLICY.check_address(target, ip_address("93.184.216.34"))
    POLICY.check_address(target, ip_address("::ffff:93.184.216.34"))
    POLICY.check_address(target, ip_address("64:ff9b::5db8:d822"))
    with pytest.raises(
        UnsafeURL, match=r"hooks\.example\.com resolves to 127\.0\.0\.2, a loopback"
    ):
        POLICY.check_address(target, ip_address("127.0.0.2"))
