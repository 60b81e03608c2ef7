"""relay.metrics: registry, Prometheus text format 0.0.4, the /metrics endpoint."""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from relay.metrics import CONTENT_TYPE, Metrics, serve_metrics


def sample_registry() -> Metrics:
    metrics = Metrics()
    dropped = metrics.counter(
        "relay_packets_dropped", "Packets dropped by the relay, by reason.", ("reason",)
    )
    dropped.child(reason="bcp38").value += 3  # the hot-path form
    dropped.inc(2, reason="scope")
    dropped.child(reason="bcp38").inc()
    metrics.counter("relay_sessions_opened_total", "Sessions accepted.").inc(5)
    sessions = metrics.gauge("relay_sessions", "Sessions open now.")
    sessions.inc(3)
    sessions.dec()
    metrics.gauge("relay_pool_free", "Free addresses in the pool.", function=lambda: 251)
    metrics.gauge("relay_lane_ratio", "Share of packets carried by the lane.").set(0.25)
    metrics.counter("relay_auth_refused", "Refused requests by status.", ("status",))
    return metrics


GOLDEN = """\
# HELP relay_packets_dropped_total Packets dropped by the relay, by reason.
# TYPE relay_packets_dropped_total counter
relay_packets_dropped_total{reason="bcp38"} 4
relay_packets_dropped_total{reason="scope"} 2
# HELP relay_sessions_opened_total Sessions accepted.
# TYPE relay_sessions_opened_total counter
relay_sessions_opened_total 5
# HELP relay_sessions Sessions open now.
# TYPE relay_sessions gauge
relay_sessions 2
# HELP relay_pool_free Free addresses in the pool.
# TYPE relay_pool_free gauge
relay_pool_free 251.0
# HELP relay_lane_ratio Share of packets carried by the lane.
# TYPE relay_lane_ratio gauge
relay_lane_ratio 0.25
# HELP relay_auth_refused_total Refused requests by status.
# TYPE relay_auth_refused_total counter
"""


def test_render_golden() -> None:
    assert sample_registry().render() == GOLDEN


def test_snapshot_keys_match_exposed_samples() -> None:
    assert sample_registry().snapshot() == {
        'relay_packets_dropped_total{reason="bcp38"}': 4,
        'relay_packets_dropped_total{reason="scope"}': 2,
        "relay_sessions_opened_total": 5,
        "relay_sessions": 2,
        "relay_pool_free": 251.0,
        "relay_lane_ratio": 0.25,
    }


def test_label_values_and_help_are_escaped() -> None:
    metrics = Metrics()
    counter = metrics.counter("odd", 'Help with \\ and\nnewline and "quotes".', ("a", "b"))
    counter.inc(a='quote " backslash \\ newline \n end', b="plain")
    lines = metrics.render().splitlines()
    assert lines[0] == '# HELP odd_total Help with \\\\ and\\nnewline and "quotes".'
    assert lines[2] == ('odd_total{a="quote \\" backslash \\\\ newline \\n end",b="plain"} 1')
    assert len(lines) == 3  # the newline in the value did not break the line


def test_labels_in_declaration_order_and_sorted_series() -> None:
    metrics = Metrics()
    counter = metrics.counter("c", "h", ("z", "a"))
    counter.inc(a="2", z="y")
    counter.labels("x", "1").value += 1
    assert list(metrics.snapshot()) == ['c_total{z="x",a="1"}', 'c_total{z="y",a="2"}']


def test_children_are_created_once() -> None:
    metrics = Metrics()
    counter = metrics.counter("c", "h", ("reason",))
    assert counter.child(reason="x") is counter.child(reason="x")
    assert counter.child(reason="x") is counter.labels("x")


def test_special_float_values() -> None:
    metrics = Metrics()
    metrics.gauge("up", "h").set(math.inf)
    metrics.gauge("down", "h").set(-math.inf)
    metrics.gauge("nan", "h").set(math.nan)
    samples = [line for line in metrics.render().splitlines() if not line.startswith("#")]
    assert samples == ["up +Inf", "down -Inf", "nan NaN"]


def test_misuse_is_refused() -> None:
    metrics = Metrics()
    counter = metrics.counter("c", "h", ("reason",))
    with pytest.raises(ValueError, match="already registered"):
        metrics.counter("c_total", "again")
    with pytest.raises(ValueError, match="already registered"):
        metrics.gauge("c_total", "a gauge exposed under the counter's name")
    with pytest.raises(ValueError, match="invalid metric name"):
        metrics.counter("bad-name", "h")
    with pytest.raises(ValueError, match="invalid label name"):
        metrics.counter("d", "h", ("__reserved",))
    with pytest.raises(TypeError):
        metrics.counter("e", "h", "reason")
    with pytest.raises(ValueError, match="labels must be exactly"):
        counter.inc(other="x")
    with pytest.raises(ValueError, match="labels must be exactly"):
        counter.inc()
    with pytest.raises(ValueError, match="cannot decrease"):
        counter.inc(-1, reason="x")
    with pytest.raises(ValueError, match="labelled gauge"):
        metrics.gauge("g", "h", ("a",), function=lambda: 1.0)


def test_failing_gauge_function_is_left_out_of_the_scrape() -> None:
    metrics = Metrics()

    def broken() -> float:
        raise RuntimeError("boom")

    metrics.gauge("broken", "h", function=broken)
    metrics.gauge("fine", "h").set(1)
    assert metrics.snapshot() == {"fine": 1}


def test_remove_forgets_a_series() -> None:
    metrics = Metrics()
    gauge = metrics.gauge("session_bytes", "h", ("session",))
    gauge.child(session="1").set(10)
    gauge.child(session="2").set(20)
    gauge.remove(session="1")
    assert metrics.snapshot() == {'session_bytes{session="2"}': 20}


def test_get_by_registered_or_exposed_name() -> None:
    metrics = sample_registry()
    assert metrics.get("relay_packets_dropped") is metrics.get("relay_packets_dropped_total")
    assert metrics.get("relay_sessions").value == 2
    with pytest.raises(KeyError):
        metrics.get("relay_sessions_total")


# -- the HTTP endpoint ---------------------------------------------------------


def run_async(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test on a fresh event loop (no pytest-asyncio here)."""

    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(test(*args, **kwargs), 30))

    return wrapper


async def http(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        await writer.wait_closed()


def split(response: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status, *header_lines = head.decode("ascii").split("\r\n")
    headers = {}
    for line in header_lines:
        key, _, value = line.partition(":")
        headers[key.lower()] = value.strip()
    return status, headers, body


@run_async
async def test_http_get_metrics_over_loopback() -> None:
    metrics = sample_registry()
    server = await serve_metrics(metrics, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        status, headers, body = split(
            await http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n")
        )
        assert status == "HTTP/1.1 200 OK"
        assert headers["content-type"] == CONTENT_TYPE
        assert headers["content-type"].startswith("text/plain; version=0.0.4")
        assert headers["connection"] == "close"
        assert int(headers["content-length"]) == len(body)
        assert body.decode() == GOLDEN

        # values are read at scrape time
        metrics.get("relay_sessions").inc()
        _, _, body = split(await http(port, b"GET /metrics?x=1 HTTP/1.0\n\n"))
        assert "\nrelay_sessions 3\n" in body.decode()

        status, headers, body = split(await http(port, b"HEAD /metrics HTTP/1.1\r\n\r\n"))
        assert status == "HTTP/1.1 200 OK" and body == b""
        assert int(headers["content-length"]) == len(metrics.render().encode())
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 404 Not Found"),
        (b"GET /metricsx HTTP/1.1\r\n\r\n", "HTTP/1.1 404 Not Found"),
        (b"POST /metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 405 Method Not Allowed"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", "HTTP/1.1 400 Bad Request"),
        (b"GET /metrics SPDY/3\r\n\r\n", "HTTP/1.1 400 Bad Request"),
        (b"GET /metrics HTTP/1.1\r\n" + b"X: " + b"a" * 10000 + b"\r\n\r\n", "HTTP/1.1 431"),
    ],
)
@run_async
async def test_bad_requests_get_an_error_and_the_server_survives(
    request_bytes: bytes, status: str
) -> None:
    server = await serve_metrics(Metrics(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        try:
            response = await http(port, request_bytes)
        except ConnectionResetError:  # the server may close with our bytes unread
            response = b""
        if response:
            assert response.decode("latin-1").startswith(status)
        elif not status.endswith("431"):
            pytest.fail("no answer")
        status_line, _, _ = split(await http(port, b"GET /metrics HTTP/1.1\r\n\r\n"))
        assert status_line == "HTTP/1.1 200 OK"
    finally:
        server.close()
        await server.wait_closed()


@run_async
async def test_hangups_and_slow_clients_do_not_stop_the_server() -> None:
    server = await serve_metrics(Metrics(), "127.0.0.1", 0, timeout=0.2)
    port = server.sockets[0].getsockname()[1]
    try:
        # half a request, then hang up
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /met")
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        # a client that never finishes its request is answered 408 and closed
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer.startswith(b"HTTP/1.1 408 ")
        writer.close()
        await writer.wait_closed()
        # still serving
        status, _, _ = split(await http(port, b"GET /metrics HTTP/1.1\r\n\r\n"))
        assert status == "HTTP/1.1 200 OK"
    finally:
        server.close()
        await server.wait_closed()
