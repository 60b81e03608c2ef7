"""_fastpath.PacketBatch: slots, zero-copy views and headroom; framing in the headroom."""

from __future__ import annotations

import gc

import pytest
from hypothesis import given
from hypothesis import strategies as st

import _fastpath
from _fastpath._core import batch_packets, frame_datagrams


def test_defaults_and_geometry() -> None:
    batch = _fastpath.PacketBatch()
    assert (batch.slots, batch.slot_size, batch.headroom) == (64, 2048, 64)
    assert len(batch) == batch.count == 0
    with pytest.raises(ValueError):
        _fastpath.PacketBatch(slots=0)
    with pytest.raises(ValueError):
        _fastpath.PacketBatch(slot_size=0)
    with pytest.raises(ValueError):
        _fastpath.PacketBatch(headroom=-1)


def test_set_view_and_count() -> None:
    batch = _fastpath.PacketBatch(slots=4, slot_size=16, headroom=8)
    batch.set(0, b"abc")
    assert len(batch) == 1
    assert bytes(batch.view(0)) == b"abc"
    assert batch.append(b"defg") == 1
    batch.set(3, b"z" * 16)  # grows count to cover slot 3
    assert len(batch) == 4
    assert batch.length(2) == 0 and bytes(batch.view(2)) == b""
    with pytest.raises(ValueError):
        batch.set(0, b"x" * 17)
    with pytest.raises(IndexError):
        batch.set(4, b"x")
    with pytest.raises(IndexError):
        batch.append(b"x")
    with pytest.raises(IndexError):
        batch.view(-1)
    batch.count = 2
    with pytest.raises(IndexError):
        batch.view(2)
    with pytest.raises(ValueError):
        batch.count = 5
    batch.clear()
    assert len(batch) == 0 and batch.length(0) == 0


def test_view_is_zero_copy_and_writable() -> None:
    batch = _fastpath.PacketBatch(slots=2, slot_size=8, headroom=4)
    batch.set(0, b"\x00" * 8)
    view = batch.view(0)
    view[0] = 0x45
    assert bytes(batch.view(0))[0] == 0x45
    # The view keeps the arena alive after the batch is dropped.
    del batch
    gc.collect()
    assert view[0] == 0x45


def test_headroom_sits_right_in_front_of_the_packet() -> None:
    batch = _fastpath.PacketBatch(slots=3, slot_size=32, headroom=16)
    batch.set(0, b"AAAA")
    batch.set(1, b"packet")
    head = batch.headroom_view(1, 3)
    head[:] = b"\x00\x01\x02"
    # Framing written in the headroom plus the packet are contiguous in the arena.
    whole = memoryview(batch)
    view = batch.view(1)
    start = bytes(whole).index(b"\x00\x01\x02packet")
    assert bytes(whole[start : start + 9]) == b"\x00\x01\x02packet"
    assert bytes(view) == b"packet"
    assert bytes(batch.view(0)) == b"AAAA"  # the neighbour is untouched
    assert batch.headroom_view(1, 0).nbytes == 0
    assert batch.headroom_view(1, 16).nbytes == 16
    with pytest.raises(ValueError):
        batch.headroom_view(1, 17)
    with pytest.raises(IndexError):
        batch.headroom_view(2, 1)


def test_slot_view_then_set_length() -> None:
    batch = _fastpath.PacketBatch(slots=2, slot_size=10, headroom=0)
    slot = batch.slot_view(1)
    assert slot.nbytes == 10
    slot[:5] = b"hello"
    batch.set_length(1, 5)
    assert len(batch) == 2
    assert bytes(batch.view(1)) == b"hello"
    with pytest.raises(ValueError):
        batch.set_length(1, 11)


@given(st.lists(st.binary(max_size=64), max_size=16), st.integers(0, 32))
def test_packets_round_trip(packets: list[bytes], headroom: int) -> None:
    batch = _fastpath.PacketBatch(slots=16, slot_size=64, headroom=headroom)
    for packet in packets:
        batch.append(packet)
    assert len(batch) == len(packets)
    assert [bytes(batch.view(i)) for i in range(len(batch))] == packets
    for i in range(len(batch)):
        batch.headroom_view(i, headroom)[:] = b"\xee" * headroom
    assert [bytes(batch.view(i)) for i in range(len(batch))] == packets


def test_frame_datagrams_writes_the_prefix_in_the_headroom() -> None:
    batch = _fastpath.PacketBatch(slots=4, slot_size=32, headroom=8)
    packets = [b"first", b"", b"\x45" * 32, b"\xff\x00garbage"]  # contents do not matter
    for p in packets:
        batch.append(p)
    prefix = b"\x40\x05\x00"  # e.g. quarter stream ID (2-byte varint) + context ID 0
    out = frame_datagrams(batch, [2, 0, 1, 3, 2], prefix)
    assert out == [prefix + packets[i] for i in (2, 0, 1, 3, 2)]
    assert all(type(d) is bytes for d in out)
    for i in range(4):
        assert bytes(batch.headroom_view(i, 3)) == prefix  # written in place, in front
        assert bytes(batch.view(i)) == packets[i]  # packets untouched
    assert frame_datagrams(batch, [], prefix) == []
    assert frame_datagrams(batch, [0], b"") == [b"first"]
    assert frame_datagrams(batch, [0], b"12345678") == [b"12345678first"]  # the whole headroom
    assert frame_datagrams(batch, range(2), bytearray(b"\x01")) == [b"\x01first", b"\x01"]


def test_frame_datagrams_errors() -> None:
    batch = _fastpath.PacketBatch(slots=4, slot_size=32, headroom=8)
    batch.append(b"abc")
    batch.append(b"def")
    with pytest.raises(ValueError):
        frame_datagrams(batch, [0], b"123456789")  # longer than the headroom
    for bad in (-1, 2, 4, 1 << 40):
        with pytest.raises(IndexError):
            frame_datagrams(batch, [0, bad], b"x")
    assert bytes(batch.view(1)) == b"def"
    no_headroom = _fastpath.PacketBatch(slots=2, slot_size=8, headroom=0)
    no_headroom.append(b"x")
    assert frame_datagrams(no_headroom, [0], b"") == [b"x"]
    with pytest.raises(ValueError):
        frame_datagrams(no_headroom, [0], b"p")


@given(
    st.lists(st.binary(max_size=64), min_size=1, max_size=16),
    st.binary(max_size=16),
    st.data(),
)
def test_frame_datagrams_matches_concatenation(
    packets: list[bytes], prefix: bytes, data: st.DataObject
) -> None:
    batch = _fastpath.PacketBatch(slots=16, slot_size=64, headroom=16)
    for p in packets:
        batch.append(p)
    indices = data.draw(st.lists(st.integers(0, len(packets) - 1), max_size=20))
    assert frame_datagrams(batch, indices, prefix) == [prefix + packets[i] for i in indices]
    assert [bytes(batch.view(i)) for i in range(len(batch))] == packets


def test_batch_packets() -> None:
    batch = _fastpath.PacketBatch(slots=4, slot_size=16)
    for p in (b"a", b"", b"ccc"):
        batch.append(p)
    assert batch_packets(batch) == [b"a", b"", b"ccc"]
    assert batch_packets(batch, b"\x00\x01\x00") == [b"a", b"ccc"]
    assert batch_packets(batch, bytearray(b"\x05\x00\x00\x09")) == [b"", b"ccc"]
    assert batch_packets(_fastpath.PacketBatch(slots=1)) == []
    with pytest.raises(ValueError):
        batch_packets(batch, b"\x00")
