"""The scenarios, and running two configurations against each other in rounds.

Every figure is a :class:`Metric`. A run has two configurations, A and B (the
baseline and the tunnel by default; any two with ``--compare``), and several
*rounds*: each round brings A up, runs every scenario once, takes it down, then
does the same for B (A B A B ...). The median over the rounds is a figure's
value; ``B / A`` per round gives the pair ratios, whose spread says how much
the machine's noise matters.

Scenarios (each one repetition per round):

``tcp``       iperf3 TCP c->t and t->c, 1 and 4 streams: Mbit/s, and the CPU
              seconds per GB moved (whole machine, relay process, client process)
``udp``       iperf3 UDP at each payload size, at a sweep of offered packet rates
              and at max: delivered packets/s and loss
``ping``      RTT p50/p99 with an idle path and under one TCP stream of load
``sessions``  (tunnel configurations only, with a relay of their own) CONNECT-IP
              session setup rate from :mod:`bench.loadgen` and the relay's
              memory at each step of open idle sessions
"""

from __future__ import annotations

import functools
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.measure import (
    IperfServer,
    iperf3_tcp,
    iperf3_udp,
    ping,
    ping_under_load,
)
from bench.procstat import rss_bytes
from bench.topology import (
    RELAY_PORT,
    TOKEN,
    BenchProcess,
    BenchProcessError,
    Config,
    Running,
    bring_up,
    start_relay,
)
from tests.netbed import TestBed

SCENARIOS = ("tcp", "udp", "ping", "sessions")
#: Order of the metric groups in tables, JSON and plots.
GROUPS = ("tcp", "cpu", "udp", "ping", "sessions")
#: A relay pool with room for the largest session step (the default /24 has 253).
SESSION_POOL_V4 = "10.100.0.0/20"

Value = float | None


@dataclass(frozen=True)
class Metric:
    """One reported figure."""

    key: str
    group: str  # tcp | cpu | udp | ping | sessions
    scenario: str
    name: str
    unit: str
    better: str  # "higher" or "lower"
    params: tuple[tuple[str, object], ...] = ()
    table: bool = True  # False: JSON only
    #: Below this, A's value is noise and B / A means nothing (a loss of 0.01 %).
    ratio_floor: float = 0.0

    def param(self, name: str) -> object:
        return dict(self.params).get(name)


@dataclass
class Plan:
    """What to measure and for how long (every field lands in the JSON)."""

    scenarios: tuple[str, ...] = SCENARIOS
    tcp_seconds: float = 5.0
    tcp_cases: tuple[tuple[int, bool], ...] = ((1, False), (1, True), (4, False), (4, True))
    udp_seconds: float = 2.0
    udp_sizes: tuple[int, ...] = (64, 512, 1280)
    udp_rates: tuple[int, ...] = (2000, 5000, 10000, 20000, 40000)
    udp_max: bool = True
    ping_count: int = 200
    ping_interval: float = 0.01
    ping_load_seconds: float = 5.0
    ping_load: bool = True
    session_steps: tuple[int, ...] = (1, 100, 1000)
    session_concurrency: int = 32

    @staticmethod
    def smoke() -> Plan:
        return Plan(
            tcp_seconds=1.0,
            tcp_cases=((1, False),),
            udp_seconds=1.0,
            udp_sizes=(512,),
            udp_rates=(),
            ping_count=20,
            ping_load=False,
            session_steps=(1, 10),
            session_concurrency=4,
        )


class Results:
    """Every value of every metric, by configuration label, one slot per round."""

    def __init__(self, labels: tuple[str, str], rounds: int) -> None:
        self.labels = labels
        self.rounds = rounds
        self.metrics: dict[str, Metric] = {}
        self.values: dict[str, dict[str, list[Value]]] = {}
        self.errors: list[dict[str, object]] = []
        self.notes: dict[str, list[str]] = {label: [] for label in labels}

    def record(self, label: str, round_index: int, metric: Metric, value: Value) -> None:
        self.metrics.setdefault(metric.key, metric)
        slots = self.values.setdefault(
            metric.key, {lab: [None] * self.rounds for lab in self.labels}
        )
        slots[label][round_index] = value

    def ordered(self) -> list[tuple[str, Metric]]:
        """Every metric, grouped (see :data:`GROUPS`), in the order measured within a group."""
        rank = {group: i for i, group in enumerate(GROUPS)}
        return sorted(self.metrics.items(), key=lambda item: rank.get(item[1].group, len(rank)))

    def runs(self, key: str, label: str) -> list[Value]:
        return self.values.get(key, {}).get(label, [])

    def median(self, key: str, label: str) -> Value:
        present = [v for v in self.runs(key, label) if v is not None]
        return statistics.median(present) if present else None

    def ratio(self, key: str) -> Value:
        """Median of B over median of A."""
        floor = self.metrics[key].ratio_floor
        return _ratio(self.median(key, self.labels[1]), self.median(key, self.labels[0]), floor)

    def pair_ratios(self, key: str) -> list[Value]:
        """B / A of each round (the two were measured minutes apart, not hours)."""
        floor = self.metrics[key].ratio_floor
        a, b = self.runs(key, self.labels[0]), self.runs(key, self.labels[1])
        return [_ratio(vb, va, floor) for va, vb in zip(a, b, strict=True)]

    def pair_ratio_median(self, key: str) -> Value:
        present = [r for r in self.pair_ratios(key) if r is not None]
        return statistics.median(present) if present else None


def _ratio(numerator: Value, denominator: Value, floor: float = 0.0) -> Value:
    if numerator is None or denominator is None or denominator == 0:
        return None
    if abs(denominator) < floor:
        return None
    return numerator / denominator


# -- the scenarios ---------------------------------------------------------------------


@dataclass
class Context:
    """What a traffic scenario gets: the bed, the configuration that is up, the server."""

    bed: TestBed
    running: Running
    iperf: IperfServer
    plan: Plan


Measured = list[tuple[Metric, Value]]


def _dir(reverse: bool) -> str:
    return "t->c" if reverse else "c->t"


def tcp_scenario(ctx: Context, streams: int, reverse: bool) -> Measured:
    name = f"tcp {streams} stream{'s' if streams > 1 else ''} {_dir(reverse)}"
    params = (("streams", streams), ("direction", _dir(reverse)))
    key = f"tcp.{streams}.{'t2c' if reverse else 'c2t'}"
    result = iperf3_tcp(
        ctx.bed,
        ctx.iperf,
        seconds=ctx.plan.tcp_seconds,
        streams=streams,
        reverse=reverse,
        pids=ctx.running.pids,
    )
    gigabytes = result.bytes / 1e9
    out: Measured = [
        (
            Metric(f"{key}.throughput", "tcp", name, "throughput", "Mbit/s", "higher", params),
            result.mbit_s,
        ),
    ]
    for who in ("machine", "relay", "client"):
        used = result.cpu.get(who)
        out.append(
            (
                Metric(f"{key}.cpu.{who}", "cpu", name, f"cpu {who}", "s/GB", "lower", params),
                used / gigabytes if used is not None and gigabytes > 0 else None,
            )
        )
    return out


def udp_scenario(ctx: Context, payload: int, pps: int) -> Measured:
    rate = f"{pps} pps" if pps else "max"
    name = f"udp {payload} B @ {rate}"
    params = (("payload", payload), ("offered_pps", pps or "max"))
    key = f"udp.{payload}.{pps or 'max'}"
    result = iperf3_udp(ctx.bed, ctx.iperf, seconds=ctx.plan.udp_seconds, payload=payload, pps=pps)
    return [
        (
            Metric(f"{key}.delivered", "udp", name, "delivered", "pkt/s", "higher", params),
            result.delivered_pps,
        ),
        (
            Metric(f"{key}.loss", "udp", name, "loss", "%", "lower", params, ratio_floor=1.0),
            result.loss_percent,
        ),
        (
            Metric(f"{key}.sent", "udp", name, "sent", "pkt/s", "higher", params, table=False),
            result.offered_pps,
        ),
    ]


def ping_scenario(ctx: Context, loaded: bool) -> Measured:
    name = "ping under load" if loaded else "ping idle"
    key = "ping.load" if loaded else "ping.idle"
    if loaded:
        result = ping_under_load(
            ctx.bed, ctx.iperf, seconds=ctx.plan.ping_load_seconds, interval=ctx.plan.ping_interval
        )
    else:
        result = ping(ctx.bed, count=ctx.plan.ping_count, interval=ctx.plan.ping_interval)
    params = (("load", "1 tcp stream c->t" if loaded else "none"),)
    return [
        (
            Metric(f"{key}.p50", "ping", name, "rtt p50", "ms", "lower", params),
            result.percentile(50),
        ),
        (
            Metric(f"{key}.p99", "ping", name, "rtt p99", "ms", "lower", params),
            result.percentile(99),
        ),
        (
            Metric(
                f"{key}.loss", "ping", name, "loss", "%", "lower", params, False, ratio_floor=1.0
            ),
            result.loss_percent,
        ),
    ]


def session_metrics(steps: tuple[int, ...]) -> list[Metric]:
    """The session figures (a baseline records them as not applicable)."""
    metrics = [
        Metric("sessions.rate", "sessions", "session setup", "rate", "sessions/s", "higher"),
        Metric("sessions.latency.p50", "sessions", "session setup", "latency p50", "ms", "lower"),
        Metric("sessions.latency.p99", "sessions", "session setup", "latency p99", "ms", "lower"),
        Metric(
            "sessions.rss.0",
            "sessions",
            "relay memory, 0 sessions",
            "rss",
            "MiB",
            "lower",
            (("sessions", 0),),
        ),
    ]
    for n in steps:
        params = (("sessions", n),)
        scenario = f"relay memory, {n} session{'s' if n > 1 else ''}"
        metrics += [
            Metric(f"sessions.rss.{n}", "sessions", scenario, "rss", "MiB", "lower", params),
            Metric(
                f"sessions.per_session.{n}",
                "sessions",
                scenario,
                "per session",
                "KiB",
                "lower",
                params,
            ),
        ]
    return metrics


def sessions_scenario(bed: TestBed, config: Config, plan: Plan) -> Measured:
    """A fresh relay, then :mod:`bench.loadgen` opening sessions step by step."""
    metrics = {m.key: m for m in session_metrics(plan.session_steps)}
    values: dict[str, Value] = {}
    with tempfile.TemporaryDirectory(prefix="masque-bench-") as state:
        relay, pin = start_relay(bed, config, Path(state), pool_v4=SESSION_POOL_V4)
        loadgen: BenchProcess | None = None
        try:
            time.sleep(0.5)  # let the relay finish starting up before its memory is read
            argv = [
                sys.executable,
                "-m",
                "bench.loadgen",
                "--relay",
                f"{bed.relay_ipv4}:{RELAY_PORT}",
                "--token",
                TOKEN,
                "--pin-sha256",
                pin,
                "--steps",
                ",".join(str(n) for n in plan.session_steps),
                "--concurrency",
                str(plan.session_concurrency),
                "--watch-pid",
                str(relay.pid),
                "--settle",
                "0.5",
            ]
            if config.carrier == "capsule":
                argv.append("--no-datagrams")
            loadgen = BenchProcess(bed, bed.client_ns, argv, name="loadgen")
            rss0 = rss_bytes(relay.pid)
            start = loadgen.wait_for("start", timeout=30)
            rss0 = int(start.get("rss", rss0)) or rss0
            values["sessions.rss.0"] = rss0 / 2**20
            opened, seconds = 0, 0.0
            previous = 0
            for index, n in enumerate(plan.session_steps):
                step = loadgen.wait_for("step", timeout=60 + n)
                if int(step["open"]) < n:
                    raise BenchProcessError(f"only {step['open']} of {n} sessions opened")
                rss = int(step["rss"])
                values[f"sessions.rss.{n}"] = rss / 2**20
                values[f"sessions.per_session.{n}"] = (rss - rss0) / n / 1024
                # The first step (usually one session) is latency, not throughput.
                if index > 0 or len(plan.session_steps) == 1:
                    opened += n - previous
                    seconds += float(step["seconds"])
                    values["sessions.latency.p50"] = float(step["p50_ms"])
                    values["sessions.latency.p99"] = float(step["p99_ms"])
                previous = n
            values["sessions.rate"] = opened / seconds if seconds > 0 else None
            loadgen.wait_for("done", timeout=30)
        finally:
            if loadgen is not None:
                try:
                    loadgen.proc.wait(timeout=10)
                except Exception:
                    loadgen.stop()
            relay.stop()
    return [(metric, values.get(key)) for key, metric in metrics.items()]


# -- running rounds ----------------------------------------------------------------------

Job = tuple[str, Callable[[Context], Measured]]


def traffic_jobs(plan: Plan) -> Iterator[Job]:
    if "tcp" in plan.scenarios:
        for streams, reverse in plan.tcp_cases:
            yield (
                f"tcp {streams} {_dir(reverse)}",
                functools.partial(tcp_scenario, streams=streams, reverse=reverse),
            )
    if "udp" in plan.scenarios:
        for payload in plan.udp_sizes:
            rates = [*plan.udp_rates, *([0] if plan.udp_max else [])]
            for pps in rates:
                yield (
                    f"udp {payload} {pps or 'max'}",
                    functools.partial(udp_scenario, payload=payload, pps=pps),
                )
    if "ping" in plan.scenarios:
        yield "ping idle", functools.partial(ping_scenario, loaded=False)
        if plan.ping_load:
            yield "ping load", functools.partial(ping_scenario, loaded=True)


def _attempt(
    results: Results, label: str, round_index: int, name: str, fn: Callable[[], Measured]
) -> Measured | None:
    """Run ``fn``, once more if it fails; record the error and go on if it fails twice."""
    for attempt in (1, 2):
        try:
            return fn()
        except Exception as error:  # any tool or parse failure: record it, keep measuring
            print(f"bench: {label}: {name} failed (attempt {attempt}): {error}", file=sys.stderr)
            if attempt == 2:
                results.errors.append(
                    {
                        "config": label,
                        "round": round_index + 1,
                        "scenario": name,
                        "error": str(error)[-2000:],
                        "traceback": traceback.format_exc()[-4000:],
                    }
                )
    return None


def run_config(
    bed: TestBed,
    iperf: IperfServer,
    config: Config,
    label: str,
    plan: Plan,
    results: Results,
    round_index: int,
    progress: Callable[[str], None],
) -> None:
    """Bring ``config`` up, run every scenario once, take it down; record into ``results``."""
    jobs = list(traffic_jobs(plan))
    if jobs:
        try:
            with bring_up(bed, config) as running:
                if running.carrier is not None:
                    note = f"carrier={running.carrier} mtu={running.mtu}"
                    if note not in results.notes[label]:
                        results.notes[label].append(note)
                ctx = Context(bed, running, iperf, plan)
                for name, job in jobs:
                    progress(f"{label}: {name}")
                    measured = _attempt(
                        results, label, round_index, name, functools.partial(job, ctx)
                    )
                    for metric, value in measured or []:
                        results.record(label, round_index, metric, value)
        except Exception as error:
            print(f"bench: {label}: could not bring it up: {error}", file=sys.stderr)
            results.errors.append(
                {
                    "config": label,
                    "round": round_index + 1,
                    "scenario": "bring-up",
                    "error": str(error)[-2000:],
                }
            )
    if "sessions" in plan.scenarios:
        if config.is_tunnel:
            progress(f"{label}: sessions {','.join(map(str, plan.session_steps))}")
            measured = _attempt(
                results,
                label,
                round_index,
                "sessions",
                lambda: sessions_scenario(bed, config, plan),
            )
            for metric, value in measured or []:
                results.record(label, round_index, metric, value)
        else:
            for metric in session_metrics(plan.session_steps):
                results.record(label, round_index, metric, None)


@dataclass
class RunSpec:
    configs: tuple[Config, Config]
    plan: Plan
    rounds: int
    started: float = field(default_factory=time.time)

    @property
    def labels(self) -> tuple[str, str]:
        a, b = (config.label for config in self.configs)
        return (a, b) if a != b else (f"{a} (A)", f"{b} (B)")


def run_rounds(bed: TestBed, spec: RunSpec, progress: Callable[[str], None]) -> Results:
    """A B A B ...: ``spec.rounds`` rounds of both configurations on ``bed``."""
    labels = spec.labels
    results = Results(labels, spec.rounds)
    iperf = IperfServer(bed)
    try:
        for round_index in range(spec.rounds):
            for config, label in zip(spec.configs, labels, strict=True):
                progress(f"round {round_index + 1}/{spec.rounds}: {label}")
                run_config(bed, iperf, config, label, spec.plan, results, round_index, progress)
    finally:
        iperf.stop()
    return results
