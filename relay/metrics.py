"""The relay's metrics: counters and gauges, Prometheus text out, no dependencies.

One :class:`Metrics` object per process owns every metric; it is created at start
and passed to whoever counts (no module-level registry). Scraping is pull-only:
:meth:`Metrics.render` writes the Prometheus text exposition format 0.0.4 and
:func:`serve_metrics` answers ``GET /metrics`` with it over plain HTTP/1.1.

Hot paths
---------
Packet paths count once per batch, and even that should cost one attribute
add. Look a labelled child up once, keep it, and add to its ``value``::

    dropped = metrics.counter("relay_packets_dropped", "Packets dropped", ("reason",))
    bcp38 = dropped.child(reason="bcp38")      # once, at set-up
    ...
    bcp38.value += n_spoofed                   # per batch: a plain int add

``child.value += n`` is not checked; :meth:`Counter.inc` and
:meth:`CounterChild.inc` refuse negative amounts. Everything here runs on the
event loop thread; nothing is locked.

Naming
------
Counters are registered without the ``_total`` suffix (a trailing ``_total`` is
stripped); the exposition adds it to the family and the sample, as the
Prometheus client libraries do in format 0.0.4. :meth:`Metrics.snapshot` keys
samples by the same exposed names, e.g. ``relay_packets_dropped_total{reason="bcp38"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, NoReturn, TypeVar

__all__ = [
    "CONTENT_TYPE",
    "Counter",
    "CounterChild",
    "Gauge",
    "GaugeChild",
    "Metrics",
    "serve_metrics",
]

logger = logging.getLogger(__name__)

#: Content-Type of the text exposition format this module writes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")

LabelValues = tuple[str, ...]


# -- escaping and formatting (exposition format 0.0.4) --------------------------


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _format_value(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _sample_name(name: str, label_names: LabelValues, values: LabelValues) -> str:
    if not label_names:
        return name
    pairs = ",".join(
        f'{key}="{_escape_label_value(val)}"' for key, val in zip(label_names, values, strict=True)
    )
    return f"{name}{{{pairs}}}"


# -- metric types ---------------------------------------------------------------


class CounterChild:
    """One labelled series of a :class:`Counter`.

    ``value`` is public so hot loops can do ``child.value += n``; it must only
    grow (a counter that goes down looks like a process restart to Prometheus).
    """

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float = 0

    def inc(self, amount: float = 1) -> None:
        """Add ``amount`` (>= 0)."""
        if amount < 0:
            raise ValueError(f"a counter cannot decrease (inc by {amount})")
        self.value += amount


class GaugeChild:
    """One labelled series of a :class:`Gauge`: a value, or a function read at scrape."""

    __slots__ = ("_function", "value")

    def __init__(self) -> None:
        self.value: float = 0
        self._function: Callable[[], float] | None = None

    def set(self, value: float) -> None:
        """Set the value (and forget a function set before)."""
        self._function = None
        self.value = value

    def inc(self, amount: float = 1) -> None:
        """Add ``amount`` (may be negative)."""
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        """Subtract ``amount``."""
        self.value -= amount

    def set_function(self, function: Callable[[], float]) -> None:
        """Report ``function()`` at every scrape instead of the stored value.

        The function runs on the event loop during :meth:`Metrics.render`: it must
        be quick and must not block. If it raises, the sample is left out of that
        scrape and the error is logged.
        """
        self._function = function

    def read(self) -> float:
        """The current value (calls the function, if one is set)."""
        if self._function is None:
            return self.value
        return float(self._function())


ChildT = TypeVar("ChildT", CounterChild, GaugeChild)


class _Metric(Generic[ChildT]):
    """What counters and gauges share: a name, a help text, labelled children."""

    kind: str = ""
    _child_type: type[ChildT]

    def __init__(self, name: str, help: str, labels: Sequence[str]) -> None:
        self.name = name
        self.help = help
        self.label_names: LabelValues = tuple(labels)
        self._children: dict[LabelValues, ChildT] = {}
        if not self.label_names:
            self._children[()] = self._child_type()

    @property
    def exposed_name(self) -> str:
        """The family name in the exposition (counters carry ``_total``)."""
        return self.name

    def child(self, **labels: str) -> ChildT:
        """The series for ``labels`` (every declared label, nothing else), created once."""
        return self.labels(*self._key(labels))

    def labels(self, *values: str) -> ChildT:
        """The series for label ``values`` given positionally, in declaration order."""
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.label_names):
                raise ValueError(
                    f"{self.name}: expected {len(self.label_names)} label values "
                    f"{self.label_names}, got {values!r}"
                )
            values = tuple(str(v) for v in values)
            child = self._children.setdefault(values, self._child_type())
        return child

    def remove(self, **labels: str) -> None:
        """Forget the series for ``labels`` (e.g. a closed session's); no error if absent."""
        if self.label_names:
            self._children.pop(self._key(labels), None)

    def samples(self) -> Iterator[tuple[str, float]]:
        """``(sample name with labels, value)`` pairs, sorted by label values."""
        name = self.exposed_name
        for values in sorted(self._children):
            child = self._children[values]
            try:
                value = child.read() if isinstance(child, GaugeChild) else child.value
            except Exception:
                logger.exception("metric %s%s: value function failed", name, values)
                continue
            yield _sample_name(name, self.label_names, values), value

    def _key(self, labels: Mapping[str, str]) -> LabelValues:
        if len(labels) != len(self.label_names):
            self._label_mismatch(labels)
        try:
            return tuple([str(labels[n]) for n in self.label_names])
        except KeyError:
            self._label_mismatch(labels)

    def _label_mismatch(self, labels: Mapping[str, str]) -> NoReturn:
        raise ValueError(
            f"{self.name}: labels must be exactly {self.label_names}, got {tuple(labels)}"
        )


class Counter(_Metric[CounterChild]):
    """A monotonically increasing count (packets, bytes, refusals)."""

    kind = "counter"
    _child_type = CounterChild

    @property
    def exposed_name(self) -> str:
        return f"{self.name}_total"

    def inc(self, amount: float = 1, **labels: str) -> None:
        """Add ``amount`` (>= 0) to the series for ``labels``.

        Convenient, not fast: hot paths keep a :meth:`child` and add to its ``value``.
        """
        child = self._children.get(()) if not labels else self.child(**labels)
        if child is None:  # a labelled counter called without labels
            self._label_mismatch(labels)
        child.inc(amount)

    @property
    def value(self) -> float:
        """The value of an unlabelled counter."""
        return self.labels().value


class Gauge(_Metric[GaugeChild]):
    """A value that goes up and down (sessions open, addresses free)."""

    kind = "gauge"
    _child_type = GaugeChild

    def _default(self) -> GaugeChild:
        if self.label_names:
            raise ValueError(f"{self.name}: labelled gauge; use .child(...)")
        return self._children[()]

    def set(self, value: float) -> None:
        """Set an unlabelled gauge."""
        self._default().set(value)

    def inc(self, amount: float = 1) -> None:
        """Add to an unlabelled gauge."""
        self._default().inc(amount)

    def dec(self, amount: float = 1) -> None:
        """Subtract from an unlabelled gauge."""
        self._default().dec(amount)

    def set_function(self, function: Callable[[], float]) -> None:
        """Evaluate ``function()`` at each scrape for an unlabelled gauge."""
        self._default().set_function(function)

    @property
    def value(self) -> float:
        """The current value of an unlabelled gauge."""
        return self._default().read()


# -- the registry ---------------------------------------------------------------


class Metrics:
    """Every metric of one process, in registration order.

    Names must be unique; registering a name twice is a programming error and
    raises :class:`ValueError`.
    """

    def __init__(self) -> None:
        self._metrics: dict[str, Counter | Gauge] = {}
        # Every name a family is known by (counters: with and without _total).
        self._families: set[str] = set()

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> Counter:
        """Register a counter. ``name`` without ``_total``; the exposition adds it."""
        name = name.removesuffix("_total")
        metric = Counter(name, help, self._check(name, labels))
        self._register(metric)
        return metric

    def gauge(
        self,
        name: str,
        help: str,
        labels: Sequence[str] = (),
        *,
        function: Callable[[], float] | None = None,
    ) -> Gauge:
        """Register a gauge; ``function`` (unlabelled gauges only) is read at each scrape."""
        metric = Gauge(name, help, self._check(name, labels))
        if function is not None:
            metric.set_function(function)
        self._register(metric)
        return metric

    def get(self, name: str) -> Counter | Gauge:
        """The metric registered as ``name`` (a counter also by its ``_total`` name)."""
        metric = self._metrics.get(name)
        if metric is None:
            metric = self._metrics.get(name.removesuffix("_total"))
            if not isinstance(metric, Counter):
                raise KeyError(name)
        return metric

    def render(self) -> str:
        """All metrics in the Prometheus text exposition format 0.0.4."""
        lines: list[str] = []
        for metric in self._metrics.values():
            family = metric.exposed_name
            lines.append(f"# HELP {family} {_escape_help(metric.help)}")
            lines.append(f"# TYPE {family} {metric.kind}")
            lines.extend(f"{sample} {_format_value(value)}" for sample, value in metric.samples())
        return "\n".join(lines) + "\n" if lines else ""

    def snapshot(self) -> dict[str, float]:
        """Every sample as ``{'name{label="v"}': value}``, named as in :meth:`render`."""
        return {
            sample: value for metric in self._metrics.values() for sample, value in metric.samples()
        }

    def _register(self, metric: Counter | Gauge) -> None:
        if metric.name in self._metrics or metric.exposed_name in self._families:
            raise ValueError(f"metric {metric.exposed_name!r} is already registered")
        self._metrics[metric.name] = metric
        self._families.add(metric.exposed_name)
        self._families.add(metric.name)

    @staticmethod
    def _check(name: str, labels: Sequence[str]) -> LabelValues:
        if not _METRIC_NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        if isinstance(labels, str):
            raise TypeError("labels must be a sequence of names, not a string")
        label_names = tuple(labels)
        for label in label_names:
            if not _LABEL_NAME.match(label) or label.startswith("__"):
                raise ValueError(f"{name}: invalid label name {label!r}")
        if len(set(label_names)) != len(label_names):
            raise ValueError(f"{name}: duplicate label names {label_names}")
        return label_names


# -- the scrape endpoint -------------------------------------------------------

#: Most bytes read of one request (request line and headers) before giving up.
MAX_REQUEST_BYTES = 8192
#: Seconds a client gets to send its request, and to take the answer.
REQUEST_TIMEOUT = 5.0

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
}


@dataclass(frozen=True, slots=True)
class _Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[str, ...] = ()
    head_only: bool = False
    "Answer to HEAD: the headers of the GET answer, no body."

    def encode(self) -> bytes:
        lines = [
            f"HTTP/1.1 {self.status} {_REASONS[self.status]}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            "Connection: close",
            *self.headers,
        ]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
        return head if self.head_only else head + self.body


async def serve_metrics(
    metrics: Metrics,
    host: str,
    port: int,
    *,
    path: str = "/metrics",
    timeout: float = REQUEST_TIMEOUT,
) -> asyncio.Server:
    """Serve ``GET path`` with :meth:`Metrics.render` over HTTP/1.1 at ``host:port``.

    One request per connection (``Connection: close``). ``HEAD`` is answered
    without a body; other methods on ``path`` get 405, other paths 404, and a
    malformed, oversized (more than :data:`MAX_REQUEST_BYTES`) or slow (more
    than ``timeout`` seconds) request 400/431/408. A client that hangs up is
    dropped silently; no error in one connection reaches the server.
    ``port=0`` picks a free port (``server.sockets[0].getsockname()``). Stop it
    with ``server.close()`` and ``await server.wait_closed()``.
    """

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            response = await _read_request(reader, metrics, path, timeout)
            if response is not None:
                writer.write(response.encode())
                async with asyncio.timeout(timeout):
                    await writer.drain()
        except Exception as exc:  # one bad client must never stop the server
            logger.debug("metrics connection failed: %r", exc)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    return await asyncio.start_server(handle, host, port, limit=MAX_REQUEST_BYTES)


async def _read_request(
    reader: asyncio.StreamReader, metrics: Metrics, path: str, timeout: float
) -> _Response | None:
    """Read one request (line and headers, which are ignored) and build its answer.

    None: the client went away before finishing its request; nothing to answer.
    """
    try:
        async with asyncio.timeout(timeout):
            request_line = await reader.readuntil(b"\n")
            budget = MAX_REQUEST_BYTES - len(request_line)
            while True:
                line = await reader.readuntil(b"\n")
                budget -= len(line)
                if budget < 0:
                    return _Response(431, b"request too large\n")
                if line in (b"\r\n", b"\n"):
                    break
    except TimeoutError:
        return _Response(408, b"request timeout\n")
    except asyncio.LimitOverrunError:
        return _Response(431, b"request too large\n")
    except asyncio.IncompleteReadError:
        return None

    parts = request_line.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return _Response(400, b"bad request\n")
    method, target, _ = parts
    if target.split("?", 1)[0] != path:
        return _Response(404, b"not found\n")
    if method not in ("GET", "HEAD"):
        return _Response(405, b"method not allowed\n", headers=("Allow: GET, HEAD",))
    body = metrics.render().encode("utf-8")
    return _Response(200, body, CONTENT_TYPE, head_only=method == "HEAD")
