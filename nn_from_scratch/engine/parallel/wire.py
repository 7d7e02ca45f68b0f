"""The messages between this process and its forked workers: no pickle anywhere.

A message is a JSON header and raw array bytes::

    4 bytes header length | JSON {"op": ..., "arrays": [[dtype, shape], ...], ...} | array bytes

``pack``/``unpack`` build and read them; ``send``/``recv`` move them over a pipe, giving up at a
deadline (``WorkerTimeout``); ``wait`` polls without sleeping for ``policy.SPIN_S`` seconds
before it blocks.
"""
import json
import math
import os
import select
import struct
import time

import numpy as np

from . import policy

__all__ = ["WorkerTimeout", "pack", "unpack", "send", "recv", "wait"]


class WorkerTimeout(RuntimeError):
    """A worker process did not answer in time (see ``policy.WAIT_MIN_S``)."""


#: message headers packed (by header and array shapes) and parsed (by their bytes): a split sends
#: the same few at every step (building a shard's message and parsing the reply cost 0.07 + 0.10 ms
#: a step in place, with the caches cold after a shard; 0.02 + 0.02 ms with the headers kept)
HEADS, HEADERS = {}, {}


def pack(header, arrays=()):
    arrays = [np.asarray(a, order="C") for a in arrays]        # (ascontiguousarray makes 0-d 1-d)
    specs = tuple((a.dtype.str, a.shape) for a in arrays)
    try:                                                        # a worker's reply: the same every step
        key = (tuple(header.items()), specs)
        head = HEADS.get(key)
    except TypeError:                                           # a header holding a dict or list
        key = head = None
    if head is None:
        text = json.dumps(dict(header, arrays=[[d, list(shape)] for d, shape in specs])).encode()
        head = struct.pack("<I", len(text)) + text
        if key is not None:
            if len(HEADS) >= 64:
                HEADS.clear()
            HEADS[key] = head
    return b"".join([head] + [a.tobytes() for a in arrays])


def unpack(buf):
    """``(header, arrays)`` of a ``pack`` message; the header dict is shared: read it, never change it."""
    (size,) = struct.unpack_from("<I", buf)
    head = bytes(buf[4:4 + size])
    parsed = HEADERS.get(head)
    if parsed is None:
        header = json.loads(head)
        if len(HEADERS) >= 64:
            HEADERS.clear()
        parsed = HEADERS[head] = (header, [(np.dtype(d), tuple(shape), math.prod(shape))
                                            for d, shape in header["arrays"]])
    header, specs = parsed
    off, arrays = 4 + size, []
    for dtype, shape, count in specs:
        arrays.append(np.frombuffer(buf, dtype=dtype, count=count, offset=off).reshape(shape))
        off += count * dtype.itemsize
    return header, arrays


def wait(conn, timeout):
    """``conn.poll(timeout)``, polling without sleeping for the first ``policy.SPIN_S`` seconds."""
    end = time.perf_counter() + policy.SPIN_S
    while not conn.poll():
        if time.perf_counter() > end:
            return conn.poll(timeout)
    return True


def send(conn, data, deadline):
    """``conn.send_bytes(data)`` (the same framing), giving up at ``deadline`` (``WorkerTimeout``):
    a stopped worker does not drain a message larger than the socket's buffer."""
    if len(data) <= 32768:                 # the worker has read every earlier message: fits at once
        conn.send_bytes(data)
        return
    fd = conn.fileno()
    view = memoryview(struct.pack("!i", len(data)) + data if len(data) <= 0x7FFFFFFF
                      else struct.pack("!i", -1) + struct.pack("!Q", len(data)) + data)
    os.set_blocking(fd, False)
    try:
        while view:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([], [fd], [], left)[1]:
                raise WorkerTimeout("a worker process did not take its shard in time")
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                continue
    finally:
        os.set_blocking(fd, True)


def read_exact(fd, n, deadline):
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise WorkerTimeout("a worker process stopped answering in the middle of its reply")
        k = os.readv(fd, [view[got:]])
        if k == 0:
            raise EOFError("the worker process ended in the middle of its reply")
        got += k
    return buf


def recv(conn, deadline):
    """``conn.recv_bytes()`` that gives up at ``deadline`` (``WorkerTimeout``)."""
    left = deadline - time.monotonic()
    if not wait(conn, max(left, 0.0)):
        raise WorkerTimeout("a worker process did not answer in time")
    fd = conn.fileno()
    (n,) = struct.unpack("!i", read_exact(fd, 4, deadline))
    if n == -1:
        (n,) = struct.unpack("!Q", read_exact(fd, 8, deadline))
    return read_exact(fd, n, deadline)
