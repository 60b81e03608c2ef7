"""What is being measured: a configuration, and bringing it up on the test bed.

A :class:`Config` is either the **baseline** (plain kernel routing client ->
relay namespace -> target, no tunnel: the bed as it comes) or a **tunnel**:
``masque-relay`` in the relay namespace and ``masque-client`` in the client
namespace, the client routing everything (full tunnel) through its TUN. The
tunnel's switches are the packet carrier (HTTP/3 datagrams or DATAGRAM capsules),
NAT on the relay, and the build features (fast path, and later the datagram lane
and AF_XDP): a feature the relay in this tree does not offer is refused with a
clear message instead of being measured as if it were there.

Configurations are written on the command line as specs: ``baseline``,
``tunnel``, or ``key=value`` pairs separated by commas (``carrier=capsule``,
``carrier=datagram,fast-path=off``), see :meth:`Config.parse`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.procstat import REPO_ROOT
from tests.netbed import TestBed

RELAY_PORT = 4433
METRICS_ADDRESS = "127.0.0.1:9464"
TOKEN = "bench-token-0123456789abcdef"
RELAY_TUN = "mqbr0"
CLIENT_TUN = "mqtun0"
CARRIERS = ("datagram", "capsule")

#: Build features a configuration may switch on: name -> the relay option that
#: turns it on. A feature is available when the relay's command line has that
#: option; until then asking for it fails (see :func:`check_features`).
FEATURES: dict[str, str] = {
    "fast-path": "--fast-path",
    "datagram-lane": "--datagram-lane",
    "af-xdp": "--xdp",  # + native mode on the relay's client-facing veth (start_relay)
}
#: Features that are on by default in relay and client: off is asked for with this
#: option (given to both), on is the default (nothing to pass).
OFF_OPTIONS: dict[str, str] = {
    "fast-path": "--no-fast-path",
    "datagram-lane": "--no-datagram-lane",
}
#: Features a configuration has unless it says otherwise.
DEFAULT_FEATURES = frozenset(OFF_OPTIONS)


def feature_args(config: Config) -> list[str]:
    """The relay/client options that give ``config`` its features."""
    args = []
    for name in sorted(FEATURES):
        if name in OFF_OPTIONS:
            if name not in config.features:
                args.append(OFF_OPTIONS[name])
        elif name in config.features and name != "af-xdp":
            args.append(FEATURES[name])
    return args


class ConfigError(ValueError):
    """A configuration spec that cannot be measured (bad syntax or missing feature)."""


class BenchProcessError(RuntimeError):
    """A relay or client did not do what its stdout contract promises."""


@dataclass(frozen=True)
class Config:
    """One configuration under test."""

    mode: str = "tunnel"  # "baseline" | "tunnel"
    carrier: str = "datagram"
    nat: bool = False
    features: frozenset[str] = DEFAULT_FEATURES

    @property
    def is_tunnel(self) -> bool:
        return self.mode == "tunnel"

    @property
    def label(self) -> str:
        """Short name for tables and plots."""
        if not self.is_tunnel:
            return "baseline"
        parts = [f"tunnel/{self.carrier}"]
        # Only what differs from the product's defaults is named.
        parts += sorted(self.features - DEFAULT_FEATURES)
        parts += [f"no-{name}" for name in sorted(DEFAULT_FEATURES - self.features)]
        if self.nat:
            parts.append("nat")
        return "+".join(parts)

    def as_dict(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "carrier": self.carrier if self.is_tunnel else None,
            "nat": self.nat if self.is_tunnel else None,
            "features": {name: name in self.features for name in FEATURES},
            "label": self.label,
        }

    @staticmethod
    def parse(spec: str, defaults: Config | None = None) -> Config:
        """``baseline``, ``tunnel`` or ``key=value[,key=value...]`` on top of ``defaults``.

        Keys: ``mode`` (baseline/tunnel), ``carrier`` (datagram/capsule), ``nat``
        (on/off) and each feature of :data:`FEATURES` (on/off). Any key other than
        ``mode`` implies a tunnel.
        """
        config = replace(defaults or Config(), mode="tunnel")
        spec = spec.strip()
        if spec in ("baseline", "tunnel"):
            return replace(config, mode=spec)
        for item in filter(None, (part.strip() for part in spec.split(","))):
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"{spec!r}: expected key=value, got {item!r}")
            if key == "mode":
                if value not in ("baseline", "tunnel"):
                    raise ConfigError(f"mode must be baseline or tunnel, not {value!r}")
                config = replace(config, mode=value)
            elif key == "carrier":
                if value not in CARRIERS:
                    raise ConfigError(f"carrier must be one of {', '.join(CARRIERS)}")
                config = replace(config, carrier=value)
            elif key == "nat":
                config = replace(config, nat=_on_off(key, value))
            elif key in FEATURES:
                enabled = set(config.features)
                (enabled.add if _on_off(key, value) else enabled.discard)(key)
                config = replace(config, features=frozenset(enabled))
            else:
                known = ", ".join(["mode", "carrier", "nat", *FEATURES])
                raise ConfigError(f"{spec!r}: unknown key {key!r} (known: {known})")
        return config


def _on_off(key: str, value: str) -> bool:
    if value in ("on", "yes", "true", "1"):
        return True
    if value in ("off", "no", "false", "0"):
        return False
    raise ConfigError(f"{key} must be on or off, not {value!r}")


def relay_options() -> set[str]:
    """Every option string the relay's command line accepts in this tree."""
    from relay.cli import build_parser

    return {opt for action in build_parser()._actions for opt in action.option_strings}


def check_features(config: Config) -> None:
    """Refuse a configuration that asks for a feature this build does not have."""
    if not config.features:
        return
    options = relay_options()
    for name in sorted(config.features):
        probe = OFF_OPTIONS.get(name, FEATURES[name])
        if probe not in options:
            raise ConfigError(
                f"{name} not available in this build: masque-relay has no {probe} "
                f"option yet, so {name}=on cannot be measured (use {name}=off)"
            )


# -- processes with stdout event lines ------------------------------------------------


def _spawn_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


class BenchProcess:
    """A program in a namespace whose stdout lines are ``word key=value ...`` events.

    ``ip netns exec`` and ``env -C`` both exec, so :attr:`pid` is the program's own
    pid (what /proc is read for). Daemon threads drain stdout and stderr so a
    chatty process (a relay printing a thousand ``session-start`` lines) never
    blocks on a full pipe.
    """

    def __init__(self, bed: TestBed, netns: str, argv: Sequence[str], *, name: str) -> None:
        self.name = name
        self.netns = netns
        self.argv = list(argv)
        self.proc = bed.spawn(netns, ["env", "-C", str(REPO_ROOT), *argv], env=_spawn_env())
        self._cond = threading.Condition()
        self._lines: list[str] = []
        self._stderr: list[str] = []
        self._eof = False
        self._cursor = 0
        assert self.proc.stdout is not None and self.proc.stderr is not None
        for target, stream in (
            (self._read_stdout, self.proc.stdout),
            (self._read_stderr, self.proc.stderr),
        ):
            threading.Thread(target=target, args=(stream,), daemon=True, name=name).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read_stdout(self, stream: Any) -> None:
        try:
            for raw in iter(stream.readline, b""):
                with self._cond:
                    self._lines.append(raw.decode(errors="replace").rstrip("\n"))
                    self._cond.notify_all()
        except (OSError, ValueError):
            pass
        finally:
            with self._cond:
                self._eof = True
                self._cond.notify_all()

    def _read_stderr(self, stream: Any) -> None:
        try:
            for raw in iter(stream.readline, b""):
                with self._cond:
                    self._stderr.append(raw.decode(errors="replace").rstrip("\n"))
                    del self._stderr[:-200]
        except (OSError, ValueError):
            pass

    def describe(self) -> str:
        with self._cond:
            out, err = self._lines[-20:], self._stderr[-30:]
        return (
            f"{self.name} (pid {self.pid}, exit {self.proc.poll()}): {' '.join(self.argv)}\n"
            + "--- stdout ---\n"
            + "\n".join(out)
            + "\n--- stderr ---\n"
            + "\n".join(err)
        )

    def wait_for(self, word: str, timeout: float = 30.0) -> dict[str, str]:
        """Fields of the next stdout line starting with ``word`` (lines before it are skipped)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                while self._cursor < len(self._lines):
                    line = self._lines[self._cursor]
                    self._cursor += 1
                    parts = line.split()
                    if parts and parts[0] == word:
                        return dict(p.split("=", 1) for p in parts[1:] if "=" in p)
                if self._eof:
                    raise BenchProcessError(
                        f"{self.name} exited without {word!r}\n{self.describe()}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BenchProcessError(
                        f"no {word!r} from {self.name} in {timeout:.0f} s\n{self.describe()}"
                    )
                self._cond.wait(remaining)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the program (so it removes its TUN, routes, NAT), SIGKILL if it lingers."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)


# -- bringing a configuration up --------------------------------------------------------


@dataclass
class Running:
    """A configuration that is up: the processes whose CPU and memory are watched."""

    config: Config
    relay: BenchProcess | None = None
    client: BenchProcess | None = None
    pin: str = ""
    carrier: str | None = None  # what the client reported it got
    mtu: int | None = None

    @property
    def pids(self) -> dict[str, int]:
        pids = {}
        if self.relay is not None:
            pids["relay"] = self.relay.pid
        if self.client is not None:
            pids["client"] = self.client.pid
        return pids


def start_relay(
    bed: TestBed, config: Config, state_dir: Path, *, pool_v4: str | None = None
) -> tuple[BenchProcess, str]:
    """Start ``masque-relay`` for ``config`` in the relay namespace; (process, cert pin)."""
    check_features(config)
    argv = [
        sys.executable,
        "-m",
        "relay.cli",
        "--state-dir",
        str(state_dir),
        "--listen",
        f"[::]:{RELAY_PORT}",
        "--token",
        TOKEN,
        "--metrics",
        METRICS_ADDRESS,
        "--tun-name",
        RELAY_TUN,
        "--carrier",
        config.carrier,
        "--log-level",
        "warning",
    ]
    if not config.nat:
        argv.append("--no-nat")
    if pool_v4 is not None:
        argv += ["--pool-v4", pool_v4]
    argv += feature_args(config)
    if "af-xdp" in config.features:
        # The relay's AF_XDP path on the link the client's packets arrive on.
        argv += ["--xdp", "native", "--xdp-interface", bed.relay_client_link.ifname]
    relay = BenchProcess(bed, bed.relay_ns, argv, name="relay")
    try:
        pin = relay.wait_for("certificate", timeout=30)["sha256"]
        relay.wait_for("ready", timeout=30)
    except BaseException:
        relay.stop()
        raise
    return relay, pin


@contextlib.contextmanager
def bring_up(bed: TestBed, config: Config) -> Iterator[Running]:
    """Bring ``config`` up on ``bed``, yield it, take it down again (processes stopped)."""
    if not config.is_tunnel:
        _check_plain_route(bed)
        yield Running(config)
        return
    with tempfile.TemporaryDirectory(prefix="masque-bench-") as state:
        relay, pin = start_relay(bed, config, Path(state))
        client: BenchProcess | None = None
        try:
            argv = [
                sys.executable,
                "-m",
                "client.cli",
                "--relay",
                f"{bed.relay_ipv4}:{RELAY_PORT}",
                "--token",
                TOKEN,
                "--pin-sha256",
                pin,
                "--tun-name",
                CLIENT_TUN,
                "--log-level",
                "warning",
            ]
            if config.carrier == "capsule":
                argv.append("--no-datagrams")
            argv += [a for a in feature_args(config) if a in OFF_OPTIONS.values()]
            client = BenchProcess(bed, bed.client_ns, argv, name="client")
            connected = client.wait_for("connected", timeout=30)
            ready = client.wait_for("ready", timeout=30)
            if connected.get("carrier") != config.carrier:
                raise BenchProcessError(
                    f"asked for carrier {config.carrier}, client got {connected.get('carrier')}"
                )
            _check_tunnel_route(bed)
            yield Running(
                config, relay, client, pin, connected.get("carrier"), int(ready.get("mtu", 0))
            )
        finally:
            if client is not None:
                client.stop()  # first: it restores the client's routes
            relay.stop()


def _route_device(bed: TestBed) -> str:
    out = bed.run(bed.client_ns, ["ip", "route", "get", str(bed.target_ipv4)]).stdout.decode()
    words = out.split()
    return words[words.index("dev") + 1] if "dev" in words else "?"


def _check_plain_route(bed: TestBed) -> None:
    device = _route_device(bed)
    if device != bed.client_link.ifname:
        raise BenchProcessError(
            f"baseline needs plain routing, but the client routes the target via {device}"
        )


def _check_tunnel_route(bed: TestBed) -> None:
    device = _route_device(bed)
    if device != CLIENT_TUN:
        raise BenchProcessError(f"the tunnel is up but the target is routed via {device}")
    # The first packet through a fresh tunnel proves the whole path works.
    result = bed.run(
        bed.client_ns, ["ping", "-n", "-q", "-c", "1", "-W", "3", str(bed.target_ipv4)], check=False
    )
    if result.returncode != 0:
        raise BenchProcessError("no ping reply from the target through the tunnel")
