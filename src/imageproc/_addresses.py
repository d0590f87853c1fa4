"""Whether imageproc may connect to a URL: the one defence against server-side request forgery.

A URL someone else hands imageproc (a webhook's callback, an image to fetch) must not make it
reach what only the server can reach: loopback, the private network, the cloud metadata service.

* :meth:`AddressPolicy.check_url` reads a URL without DNS into a :class:`Target`: ``http`` or
  ``https``, a host, no user name or password, no whitespace or control characters; a host that
  is an IP address (in any spelling a resolver accepts: ``2130706433``, ``0x7f.1``, ``127.1``)
  or ``localhost`` is judged there and then.
* :meth:`AddressPolicy.resolve` (and :meth:`~AddressPolicy.resolve_async`) looks the host up and
  refuses the target if any of its addresses is refused.

An address is allowed when it is public (``is_global``, not multicast) and so is any IPv4
address inside it (IPv4-mapped, IPv4-compatible, NAT64, 6to4, Teredo), or when the policy's
allowlist names its network or the URL's host. A fragment is dropped: it never goes on the wire.

Connect to an address :meth:`~AddressPolicy.resolve` returned; never let the HTTP client resolve
the name again: a name can answer a public address to the check and a private one to the
connection (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Any, Final, TypeAlias
from urllib.parse import urlsplit

import attrs

from imageproc.errors import UnsafeURL

__all__ = ["MAX_URL_LENGTH", "Address", "AddressPolicy", "Target", "as_policy"]

#: An IP address of either family.
Address: TypeAlias = IPv4Address | IPv6Address
_Network: TypeAlias = IPv4Network | IPv6Network

#: The longest URL accepted, in characters.
MAX_URL_LENGTH: Final = 2048
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_HINT: Final = "allowlist it to connect there"
# A label of an ASCII host name. Underscores are not legal in host names but internal DNS and
# container networks use them, and they cannot spell an address.
_LABEL: Final = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
# A last label resolvers (inet_aton) and browsers (WHATWG) read as a number: such a host is an
# IPv4 address or nothing, never a name to look up.
_NUMERIC: Final = re.compile(r"[0-9]+|0x[0-9a-f]*")
_OCTAL: Final = re.compile(r"0[0-7]*")
_DECIMAL: Final = re.compile(r"[1-9][0-9]*")
_PORT: Final = re.compile(r"[0-9]{1,5}")
_NAT64: Final = IPv6Network("64:ff9b::/96")
_COMPATIBLE: Final = IPv6Network("::/96")
_ONE: Final = IPv4Address(1)
# Why a non-public address is refused, for the message: the first kind with a network holding it.
_KINDS: Final = tuple(
    (kind, tuple(ip_network(network) for network in networks))
    for kind, networks in {
        "link-local address (cloud metadata)": ["169.254.169.254/32"],
        "link-local address (container metadata)": ["169.254.170.2/32"],
        "shared address (cloud metadata)": ["100.100.100.200/32"],
        "private address (cloud metadata)": ["fd00:ec2::254/128"],
        "unspecified address": ["0.0.0.0/32", "::/128"],
        "this-network address": ["0.0.0.0/8"],
        "loopback address": ["127.0.0.0/8", "::1/128"],
        "private address": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"],
        "shared address (carrier-grade NAT)": ["100.64.0.0/10"],
        "link-local address": ["169.254.0.0/16", "fe80::/10"],
        "site-local address": ["fec0::/10"],
        "documentation address": [
            "192.0.2.0/24",
            "198.51.100.0/24",
            "203.0.113.0/24",
            "2001:db8::/32",
        ],
        "benchmarking address": ["198.18.0.0/15"],
        # Special-purpose ranges that some Python releases' is_global counts as global.
        "protocol-assignment address": ["192.0.0.0/24"],
        "6to4 relay address": ["192.88.99.0/24"],
        "multicast address": ["224.0.0.0/4", "ff00::/8"],
        "broadcast address": ["255.255.255.255/32"],
        "reserved address": ["240.0.0.0/4", "::/8"],
    }.items()
)


@attrs.frozen
class Target:
    """A URL :meth:`AddressPolicy.check_url` accepted, in the parts a client connects with.

    ``url`` is rebuilt from them (scheme and host lower case, the host as checked: IDNA-encoded,
    an IPv4 address as a dotted quad, IPv6 compressed; no fragment), so that a client given it
    cannot read the host differently from the check.
    """

    url: str
    scheme: str
    #: Lower case, IDNA-encoded (ASCII); an IPv6 address without brackets.
    host: str
    #: Explicit or the scheme's default.
    port: int
    #: The path and ``?query`` if any; ``/`` when the URL has no path.
    path: str
    #: The address when the host is an IP literal.
    literal: Address | None


@attrs.frozen
class AddressPolicy:
    """Which URLs and addresses imageproc may connect to: public ones, and what ``allow`` names.

    ``allow`` holds host names (exact, case-insensitive: the name's every address is then
    allowed, whatever it is) and networks (``10.0.0.0/8``, ``::1/128``, a single ``127.0.0.1``).
    A bad entry is a :class:`ValueError` naming it. Every refusal is an
    :class:`~imageproc.errors.UnsafeURL` naming the host and the reason.
    """

    allow: tuple[str, ...] = ()
    _names: frozenset[str] = attrs.field(init=False, repr=False, eq=False)
    _networks: tuple[_Network, ...] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        if isinstance(self.allow, str):  # a tuple of characters would be a confusing ValueError
            raise TypeError("allow is a tuple of entries; AddressPolicy.from_text reads text")
        entries = [_allow_entry(entry) for entry in self.allow]
        object.__setattr__(self, "_names", frozenset(e for e in entries if isinstance(e, str)))
        networks = tuple(e for e in entries if not isinstance(e, str))
        object.__setattr__(self, "_networks", networks)

    @classmethod
    def from_text(cls, text: str) -> AddressPolicy:
        """The policy allowing the entries of ``"hooks.internal, 10.0.0.0/8 127.0.0.1"``
        (separated by commas, spaces or both); a bad entry is a ValueError naming it."""
        return cls(tuple(entry for entry in re.split(r"[\s,]+", text) if entry))

    def check_url(self, url: str, *, what: str = "URL") -> Target:
        """``url`` as a :class:`Target`, or :class:`~imageproc.errors.UnsafeURL` (its message
        starting with ``what``, such as ``"callback URL"``). No DNS: a host that is an IP address
        or ``localhost`` is judged here, a name only by :meth:`resolve`."""
        if len(url) > MAX_URL_LENGTH:
            raise UnsafeURL(f"{what} is {len(url)} characters long, more than {MAX_URL_LENGTH}")
        for position, char in enumerate(url, start=1):
            # A backslash too: browsers read it as "/", urllib as a character of the host.
            if char.isspace() or not char.isprintable() or char == "\\":
                raise UnsafeURL(
                    f"{what} has whitespace, a control character or a backslash"
                    f" (U+{ord(char):04X} at character {position})"
                )
        try:
            parts = urlsplit(url)
        except ValueError as error:
            raise UnsafeURL(f"{what} is not a valid URL ({error})") from error
        scheme, netloc = parts.scheme, parts.netloc  # urlsplit lowers the scheme
        if scheme not in _DEFAULT_PORTS:
            raise UnsafeURL(f"{what} must be http:// or https://, not {scheme or 'schemeless'}")
        origin = f"{scheme}://{netloc.rpartition('@')[2]}"  # never echo a password
        if "@" in netloc:
            raise UnsafeURL(
                f"{what} {origin}: a user name or password (…@ before the host) is refused:"
                " it hides the real host from readers"
            )
        if not netloc:
            raise UnsafeURL(f"{what} names no host")
        try:
            written, port_text = _split_netloc(netloc)
            host, literal = _host(written)
        except ValueError as error:
            raise UnsafeURL(f"{what} {origin}: {error}") from error
        if port_text is None:
            port = _DEFAULT_PORTS[scheme]
        elif _PORT.fullmatch(port_text) and 1 <= int(port_text) <= 65535:
            port = int(port_text)
        else:
            raise UnsafeURL(f"{what} {origin}: the port must be a number from 1 to 65535")
        shown = f"[{host}]" if isinstance(literal, IPv6Address) else host
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        at = "" if port_text is None else f":{port}"
        target = Target(f"{scheme}://{shown}{at}{path}", scheme, host, port, path, literal)
        if literal is not None and (reason := self._refusal(target, literal)):
            written = written.strip("[]")
            respelled = isinstance(literal, IPv4Address) and written.lower() != host
            what_it_is = f"{literal}, {reason}" if respelled else reason
            raise UnsafeURL(f"{what} {origin}: {written} is {what_it_is}; {_HINT}")
        bare = host.removesuffix(".")
        is_localhost = bare == "localhost" or bare.endswith(".localhost")
        if is_localhost and bare not in self._names:
            raise UnsafeURL(f"{what} {origin}: {host} names this machine (loopback); {_HINT}")
        return target

    def check_address(self, target: Target, address: Address) -> None:
        """Refuse (:class:`~imageproc.errors.UnsafeURL`) connecting to ``address`` for
        ``target``, unless it is public or allowlisted (by network, or the target's host by
        name)."""
        if reason := self._refusal(target, address):
            subject = "is" if address == target.literal else f"resolves to {address},"
            raise UnsafeURL(f"URL {_origin(target)}: {target.host} {subject} {reason}; {_HINT}")

    def resolve(self, target: Target) -> list[Address]:
        """The addresses of ``target`` (``getaddrinfo`` order, without repeats), each checked:
        one refused refuses them all (an attacker's name picks which record a client uses).
        An IP literal is checked and returned without DNS. A name that does not resolve is an
        :class:`~imageproc.errors.UnsafeURL` with ``transient=True``."""
        if target.literal is not None:
            self.check_address(target, target.literal)
            return [target.literal]
        try:
            found = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as error:
            raise _unresolved(target, error) from error
        return self._checked(target, found)

    async def resolve_async(self, target: Target) -> list[Address]:
        """:meth:`resolve` through the running event loop's ``getaddrinfo``."""
        if target.literal is not None:
            return self.resolve(target)  # no lookup, nothing to wait for
        loop = asyncio.get_running_loop()
        try:
            found = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as error:
            raise _unresolved(target, error) from error
        return self._checked(target, found)

    def _checked(self, target: Target, found: Iterable[Sequence[Any]]) -> list[Address]:
        addresses = list(
            dict.fromkeys(
                ip_address(info[4][0])
                for info in found
                if info[0] in (socket.AF_INET, socket.AF_INET6) and isinstance(info[4][0], str)
            )
        )
        if not addresses:
            raise _unresolved(target, "no IP address")
        for address in addresses:
            self.check_address(target, address)
        return addresses

    def _refusal(self, target: Target, address: Address) -> str | None:
        """Why ``address`` is refused for ``target`` ("a loopback address"), None if it is not."""
        if target.host.removesuffix(".") in self._names:
            return None
        # On a dual-stack socket ::ffff:a.b.c.d is a.b.c.d: one allowlist entry covers both.
        same = (address, address.ipv4_mapped) if isinstance(address, IPv6Address) else (address,)
        if any(a in network for a in same if a is not None for network in self._networks):
            return None
        return _reason(address)


def _reason(address: Address) -> str | None:
    """Why ``address`` is not public, with its article ("an IPv4-mapped loopback address
    (127.0.0.1)"), or None when it is."""
    if isinstance(address, IPv6Address):
        for how, inner in _embedded(address):
            if kind := _kind(inner):
                return f"{_article(how)} {how} {kind} ({inner})"
        # These two are only other spellings of their IPv4 address, which is public.
        if address.ipv4_mapped is not None or address in _NAT64:
            return None
    kind = _kind(address)
    return f"{_article(kind)} {kind}" if kind else None


_SPECIAL: Final = tuple(
    net
    for kind, nets in _KINDS
    if kind in ("protocol-assignment address", "6to4 relay address")
    for net in nets
)


def _kind(address: Address) -> str | None:
    # Besides is_global (whose tables vary between Python releases): site-local and reserved
    # IPv6 ranges that some releases count as global. For IPv4 these add nothing.
    site_local = isinstance(address, IPv6Address) and address.is_site_local
    special = any(address in n for n in _SPECIAL)
    if address.is_global and not (
        address.is_multicast or address.is_reserved or site_local or special
    ):
        return None
    return next(
        (kind for kind, nets in _KINDS if any(address in n for n in nets)), "non-public address"
    )


def _embedded(address: IPv6Address) -> list[tuple[str, IPv4Address]]:
    """The IPv4 addresses inside ``address``, each with how it is embedded."""
    low = IPv4Address(int(address) & 0xFFFFFFFF)
    found = [("IPv4-mapped", address.ipv4_mapped), ("6to4", address.sixtofour)]
    found += [("Teredo", inner) for inner in address.teredo or ()]
    found += [("NAT64", low if address in _NAT64 else None)]
    # ::a.b.c.d; :: and ::1 are the unspecified and loopback addresses, not 0.0.0.0 and 0.0.0.1.
    found += [("IPv4-compatible", low if address in _COMPATIBLE and low > _ONE else None)]
    return [(how, inner) for how, inner in found if inner is not None]


def _article(phrase: str) -> str:
    return "an" if phrase[0].lower() in "aeiou" else "a"


def _origin(target: Target) -> str:
    # Not the path or query: webhook URLs often carry their secret there, and messages are logged.
    return target.url.removesuffix(target.path)


def _unresolved(target: Target, error: object) -> UnsafeURL:
    detail = error.strerror if isinstance(error, OSError) and error.strerror else error
    # Transient: DNS failing is not a refusal, and may heal.
    message = f"URL {_origin(target)}: {target.host} does not resolve ({detail})"
    return UnsafeURL(message, transient=True)


def _split_netloc(netloc: str) -> tuple[str, str | None]:
    """The host (brackets kept) and the port text (None when absent) of ``netloc``."""
    if netloc.startswith("["):
        inside, bracket, rest = netloc[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{netloc} is not [IPv6 address] or [IPv6 address]:port")
        return f"[{inside}]", rest[1:] if rest else None
    host, colon, port = netloc.partition(":")
    return host, port if colon else None


def _host(written: str) -> tuple[str, Address | None]:
    """The host as checked and, for an IP literal, its address; ValueError when malformed."""
    if written.startswith("["):
        if "%" in written:  # a zone picks an interface, which only makes sense for link-local
            raise ValueError("an IPv6 zone (%) is refused")
        address = IPv6Address(written[1:-1])
        return str(address), address
    name = _name(written)
    bare = name.removesuffix(".")
    if not _NUMERIC.fullmatch(bare.rpartition(".")[2]):
        return name, None
    ipv4 = _inet_aton(bare)
    if ipv4 is None:
        raise ValueError(f"{written} is neither a host name nor an IPv4 address")
    return str(ipv4), ipv4


def _name(written: str) -> str:
    """``written`` as an ASCII host name: lower case, an international name IDNA-encoded."""
    name = written.lower()
    try:
        # IDNA 2003 (the standard library's); the Target carries the result, so a client given
        # it cannot encode the name another way (IDNA 2008 differs on ß, ς…).
        name = name if name.isascii() else name.encode("idna").decode("ascii")
    except UnicodeError as error:
        raise ValueError(f"{written} is not a valid host name") from error
    bare = name.removesuffix(".")
    if len(bare) > 253 or not all(_LABEL.fullmatch(label) for label in bare.split(".")):
        raise ValueError(f"{written} is not a valid host name")
    return name


def _inet_aton(text: str) -> IPv4Address | None:
    """``text`` read as ``inet_aton`` and browsers read it (1 to 4 parts, each decimal, octal
    with a leading 0 or hex with 0x; the last fills the bytes left), or None."""
    parts = text.split(".")
    numbers = [_number(part) for part in parts]
    if len(parts) > 4 or None in numbers:
        return None
    *head, last = [n for n in numbers if n is not None]
    if any(n > 255 for n in head) or last >= 256 ** (4 - len(head)):
        return None
    return IPv4Address(sum(n << 8 * (3 - i) for i, n in enumerate(head)) + last)


def _number(part: str) -> int | None:
    if part.startswith("0x"):
        hexadecimal = part[2:]
        return int(hexadecimal or "0", 16) if re.fullmatch(r"[0-9a-f]*", hexadecimal) else None
    if _OCTAL.fullmatch(part):
        return int(part, 8)
    return int(part) if _DECIMAL.fullmatch(part) else None


def _allow_entry(entry: str) -> str | _Network:
    """An allowlist entry as a network, or as a host name (lower case, ASCII, no final dot)."""
    last = entry.removesuffix(".").rpartition(".")[2].lower()
    try:
        if "/" in entry or ":" in entry or _NUMERIC.fullmatch(last):
            return ip_network(entry)
        return _name(entry).removesuffix(".")
    except ValueError as error:
        message = f"allowlist entry {entry!r} is not a host name or network: {error}"
        raise ValueError(message) from error


def as_policy(value: AddressPolicy | str | Iterable[str]) -> AddressPolicy:
    """``value`` as a policy: a policy as it is, text as :meth:`AddressPolicy.from_text` reads
    it, or the allowlist's entries (what the settings that hold a policy accept)."""
    if isinstance(value, AddressPolicy):
        return value
    if isinstance(value, str):
        return AddressPolicy.from_text(value)
    return AddressPolicy(allow=tuple(value))
