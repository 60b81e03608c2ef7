"""Egress NAT of the client address pools with nftables, plus the forwarding sysctls.

The relay hands client packets to the kernel through its TUN device; the kernel
routes them and, with :class:`NatManager` started, masquerades them behind the
egress interface's address. Everything lives in one table of our own (default
``inet masque_relay``) written through ``nft``'s JSON interface::

    table inet masque_relay {
        counter masq_ipv4 {}      # connections masqueraded (first packet of each flow)
        counter out_ipv4 {}       # packets/bytes leaving translated
        counter in_ipv4 {}        # packets/bytes of the replies translated back
        chain nat_postrouting {
            type nat hook postrouting priority srcnat; policy accept;
            ip saddr 10.100.0.0/24 ip daddr != { 10.100.0.0/24 } oifname "eth0" \\
                counter name "masq_ipv4" masquerade
        }
        chain count_out {
            type filter hook postrouting priority srcnat + 10; policy accept;
            ct direction original ct status snat ct original ip saddr { 10.100.0.0/24 } \\
                counter name "out_ipv4"
        }
        chain count_in {
            type filter hook prerouting priority dstnat + 10; policy accept;
            ct direction reply ct status snat ct original ip saddr { 10.100.0.0/24 } \\
                counter name "in_ipv4"
        }
    }

(and the same for IPv6). Nothing else in the ruleset is read or changed: the
table is created and replaced in one atomic transaction (``add table``, ``delete
table``, then the full contents), so a table left by a crashed relay is replaced,
never duplicated, and a failed start leaves the ruleset as it was. ``stop()``
deletes the table and nothing else. Our chains only add NAT and counting: a
``drop`` policy in another table (a host firewall) still applies to the tunnel's
traffic and must allow it.

Sysctls changed on start and restored on stop (only those that needed changing):

- ``net/ipv4/ip_forward`` (IPv4 pools) and ``net/ipv6/conf/all/forwarding``
  (IPv6 pools) set to 1. Writing either also rewrites the per-interface
  ``forwarding`` values (and IPv4's ``accept_redirects``); restoring writes them
  back the same way.
- With IPv6 forwarding on, an interface with ``accept_ra=1`` ignores Router
  Advertisements and the relay would lose a SLAAC default route: the egress
  interface's ``accept_ra`` 1 becomes 2 (accept RAs even when forwarding).
- Reverse-path filtering on the TUN: the kernel applies ``max(conf/all/rp_filter,
  conf/<dev>/rp_filter)``, so setting the device to 0 does nothing while ``all``
  is 1 (strict). When the effective mode is strict the TUN's value becomes 2
  (loose), which wins over ``all``=1.

Two relays sharing a network namespace need distinct ``table`` names; the
sysctls are shared, so the first to stop restores forwarding for both.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from netio.sysctl import SysctlChanges, read_sysctl

__all__ = ["NatCounters", "NatError", "NatFamilyCounters", "NatManager"]

_log = logging.getLogger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_TABLE = "masque_relay"
_FAMILY = "inet"
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,31}$")
# Chain priorities (nft's named priorities: dstnat = -100, srcnat = 100).
_PRIO_SRCNAT = 100
_PRIO_DSTNAT = -100


class NatError(RuntimeError):
    """``nft`` failed (missing binary, kernel without nf_tables NAT, bad ruleset)."""


@dataclass(frozen=True)
class NatFamilyCounters:
    """NAT counters of one address family since :meth:`NatManager.start`."""

    connections: int  # flows masqueraded (the nat chain sees only a flow's first packet)
    out_packets: int  # packets from the pool sent out with a translated source
    out_bytes: int
    in_packets: int  # reply packets translated back to a pool address
    in_bytes: int


@dataclass(frozen=True)
class NatCounters:
    """Counters of both families; a family that is not masqueraded reads all zero."""

    ipv4: NatFamilyCounters
    ipv6: NatFamilyCounters


_ZERO = NatFamilyCounters(0, 0, 0, 0, 0)


class NatManager:
    """Masquerade the client pools behind the egress address; start/stop or ``with``.

    ``pools``: the relay's client prefixes (IPv4 and/or IPv6). ``egress_interface``:
    NAT only what leaves through it (None: whatever leaves, except traffic between
    pool addresses). ``tun_interface``: the relay's TUN, whose reverse-path filter
    is made loose. ``ipv4_masquerade``/``ipv6_masquerade``: masquerade that family
    (IPv6 on by default, the default pool being ULA); a family not masqueraded is
    still forwarded (a routed, public pool). ``manage_sysctls=False`` leaves
    forwarding and rp_filter to the operator.
    """

    def __init__(
        self,
        pools: Iterable[IPNetwork],
        egress_interface: str | None = None,
        *,
        tun_interface: str | None = None,
        ipv4_masquerade: bool = True,
        ipv6_masquerade: bool = True,
        table: str = DEFAULT_TABLE,
        manage_sysctls: bool = True,
        nft: str = "nft",
    ) -> None:
        self.pools: tuple[IPNetwork, ...] = tuple(pools)
        if not self.pools:
            raise ValueError("NAT needs at least one pool")
        if not _NAME_RE.match(table):
            raise ValueError(f"invalid nftables table name: {table!r}")
        for name in (egress_interface, tun_interface):
            if name is not None and (not name or len(name) > 15 or "/" in name):
                raise ValueError(f"invalid interface name: {name!r}")
        self.egress_interface = egress_interface
        self.tun_interface = tun_interface
        self.table = table
        self._masquerade = {4: ipv4_masquerade, 6: ipv6_masquerade}
        self._manage_sysctls = manage_sysctls
        self._nft = nft
        self._sysctls = SysctlChanges()
        self._active = False

    # -- lifetime -----------------------------------------------------------------

    @property
    def active(self) -> bool:
        """True between a successful :meth:`start` and :meth:`stop`."""
        return self._active

    def start(self) -> None:
        """Install (or atomically replace) our table, then enable forwarding."""
        self._run_nft(self.ruleset())
        families = [v for v, on in self._masquerade.items() if on]
        if families:
            _log.info(
                "NAT table %s %s installed: masquerading %s (IPv%s) via %s",
                _FAMILY,
                self.table,
                ", ".join(str(p) for p in self.pools if p.version in families),
                "/".join(map(str, families)),
                self.egress_interface or "any interface",
            )
        else:
            _log.info(
                "no masquerade: %s routed as they are (table %s %s holds counters only)",
                ", ".join(map(str, self.pools)),
                _FAMILY,
                self.table,
            )
        try:
            if self._manage_sysctls:
                self._apply_sysctls()
        except BaseException:
            self._sysctls.restore()
            self._delete_table()
            raise
        self._active = True

    def stop(self) -> None:
        """Delete our table (if present) and restore the sysctls. Idempotent."""
        try:
            self._delete_table()
        finally:
            self._active = False
            self._sysctls.restore()

    def __enter__(self) -> NatManager:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- counters -----------------------------------------------------------------

    def counters(self) -> NatCounters:
        """Read the table's counters (all zero if the table is absent)."""
        result = self._nft_cmd(
            ["-j", "list", "counters", "table", _FAMILY, self.table], check=False
        )
        if result.returncode != 0:
            return NatCounters(_ZERO, _ZERO)
        values: dict[str, tuple[int, int]] = {}
        for item in json.loads(result.stdout).get("nftables", []):
            counter = item.get("counter")
            if counter and counter.get("table") == self.table:
                values[counter["name"]] = (int(counter["packets"]), int(counter["bytes"]))

        def family(suffix: str) -> NatFamilyCounters:
            out = values.get(f"out_{suffix}", (0, 0))
            back = values.get(f"in_{suffix}", (0, 0))
            return NatFamilyCounters(values.get(f"masq_{suffix}", (0, 0))[0], *out, *back)

        return NatCounters(family("ipv4"), family("ipv6"))

    # -- the ruleset ----------------------------------------------------------------

    def ruleset(self) -> dict[str, Any]:
        """The nft JSON transaction :meth:`start` runs (exposed for tests and logs)."""
        table = {"family": _FAMILY, "name": self.table}
        commands: list[dict[str, Any]] = [
            # add + delete + add: replaces a leftover table atomically; works when absent.
            {"add": {"table": table}},
            {"delete": {"table": table}},
            {"add": {"table": table}},
        ]
        chains = (
            ("nat_postrouting", "nat", "postrouting", _PRIO_SRCNAT),
            ("count_out", "filter", "postrouting", _PRIO_SRCNAT + 10),
            ("count_in", "filter", "prerouting", _PRIO_DSTNAT + 10),
        )
        for name, kind, hook, prio in chains:
            commands.append(
                {
                    "add": {
                        "chain": {
                            "family": _FAMILY,
                            "table": self.table,
                            "name": name,
                            "type": kind,
                            "hook": hook,
                            "prio": prio,
                            "policy": "accept",
                        }
                    }
                }
            )
        for version, suffix, proto in ((4, "ipv4", "ip"), (6, "ipv6", "ip6")):
            pools = [p for p in self.pools if p.version == version]
            if not pools or not self._masquerade[version]:
                continue
            for counter in (f"masq_{suffix}", f"out_{suffix}", f"in_{suffix}"):
                commands.append(
                    {"add": {"counter": {"family": _FAMILY, "table": self.table, "name": counter}}}
                )
            pool_set = {"set": [_prefix(p) for p in pools]}
            for pool in pools:
                expr: list[dict[str, Any]] = [
                    _match("==", {"payload": {"protocol": proto, "field": "saddr"}}, _prefix(pool)),
                    _match("!=", {"payload": {"protocol": proto, "field": "daddr"}}, pool_set),
                ]
                if self.egress_interface is not None:
                    expr.append(_match("==", {"meta": {"key": "oifname"}}, self.egress_interface))
                expr += [{"counter": f"masq_{suffix}"}, {"masquerade": None}]
                commands.append(self._rule("nat_postrouting", expr))
            for chain, direction in (("count_out", "original"), ("count_in", "reply")):
                commands.append(
                    self._rule(
                        chain,
                        [
                            _match("==", {"ct": {"key": "direction"}}, direction),
                            _match("in", {"ct": {"key": "status"}}, "snat"),
                            _match(
                                "==", {"ct": {"key": f"{proto} saddr", "dir": "original"}}, pool_set
                            ),
                            {"counter": f"{'out' if direction == 'original' else 'in'}_{suffix}"},
                        ],
                    )
                )
        return {"nftables": commands}

    def _rule(self, chain: str, expr: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "add": {"rule": {"family": _FAMILY, "table": self.table, "chain": chain, "expr": expr}}
        }

    def _delete_table(self) -> None:
        table = {"family": _FAMILY, "name": self.table}
        self._run_nft({"nftables": [{"add": {"table": table}}, {"delete": {"table": table}}]})
        _log.info("NAT table %s %s removed", _FAMILY, self.table)

    def _run_nft(self, document: dict[str, Any]) -> None:
        self._nft_cmd(["-j", "-f", "-"], input=json.dumps(document))

    def _nft_cmd(
        self, args: Sequence[str], *, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        try:
            result = subprocess.run(
                [self._nft, *args], input=input, capture_output=True, text=True, timeout=30
            )
        except FileNotFoundError as exc:
            raise NatError(f"nftables command not found: {self._nft}") from exc
        if check and result.returncode != 0:
            raise NatError(
                f"nft {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}"
            )
        return result

    # -- sysctls ------------------------------------------------------------------

    def _apply_sysctls(self) -> None:
        versions = {p.version for p in self.pools}
        if 4 in versions:
            self._sysctls.set("net/ipv4/ip_forward", 1)
        if 6 in versions:
            turned_on = self._sysctls.set("net/ipv6/conf/all/forwarding", 1)
            if turned_on and self.egress_interface is not None:
                accept_ra = f"net/ipv6/conf/{self.egress_interface}/accept_ra"
                try:
                    if read_sysctl(accept_ra) == "1":
                        self._sysctls.set(accept_ra, 2)
                except FileNotFoundError:
                    _log.warning("egress interface %s not found", self.egress_interface)
        if self.tun_interface is not None and 4 in versions:
            dev = f"net/ipv4/conf/{self.tun_interface}/rp_filter"
            effective = max(int(read_sysctl("net/ipv4/conf/all/rp_filter")), int(read_sysctl(dev)))
            if effective == 1:  # strict: replies routed elsewhere would be dropped
                self._sysctls.set(dev, 2)


def _prefix(network: IPNetwork) -> dict[str, Any]:
    return {"prefix": {"addr": str(network.network_address), "len": network.prefixlen}}


def _match(op: str, left: dict[str, Any], right: Any) -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}
