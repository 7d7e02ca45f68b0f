"""The messages between the grader and a submission's process: JSON and arrays, never pickle.

A message is ``[8-byte length][4-byte header length][JSON header][.npz bytes]``: the header holds
plain values (the operation, constructor arguments, names), the ``.npz`` part the arrays, read with
``allow_pickle=False``.  A reader never trusts a length beyond ``MAX_MESSAGE`` (a submission's
process may write anything to its end of the pipe).
"""
import io
import json
import os
import select
import struct
import time

import numpy as np

__all__ = ["encode", "decode", "read_message", "write_message", "ProtocolError", "MAX_MESSAGE"]

#: the largest message accepted (bytes)
MAX_MESSAGE = 256 * 1024 * 1024


class ProtocolError(Exception):
    """A message could not be read: malformed, too large, or the other side went away or ran out of time."""


def encode(header, arrays=None):
    """``bytes`` of one message: the JSON-able ``header`` and a dict of NumPy arrays."""
    head = json.dumps(header).encode()
    buf = io.BytesIO()
    if arrays:
        np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    body = buf.getvalue()
    payload = struct.pack("<I", len(head)) + head + body
    return struct.pack("<Q", len(payload)) + payload


def decode(payload):
    """``(header, arrays)`` from a message's payload (without its 8-byte length)."""
    if len(payload) < 4:
        raise ProtocolError("message too short")
    (n,) = struct.unpack("<I", payload[:4])
    if n > len(payload) - 4:
        raise ProtocolError("header length beyond the message")
    try:
        header = json.loads(payload[4:4 + n].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("header is not a JSON object")
    body = payload[4 + n:]
    arrays = {}
    if body:
        try:
            with np.load(io.BytesIO(body), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as exc:  # noqa: BLE001 - whatever the bytes are, they are not arrays
            raise ProtocolError(f"arrays unreadable: {type(exc).__name__}: {exc}") from None
    return header, arrays


def _read_exact(fd, n, deadline):
    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer before the time limit")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                raise TimeoutError("no answer before the time limit")
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            raise ProtocolError("the process closed its end (it exited)")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_message(fd, deadline=None):
    """Read one message from file descriptor ``fd`` (``deadline``: a ``time.monotonic()`` value or None)."""
    (n,) = struct.unpack("<Q", _read_exact(fd, 8, deadline))
    if n > MAX_MESSAGE:
        raise ProtocolError(f"message of {n} bytes announced (more than {MAX_MESSAGE})")
    return decode(_read_exact(fd, n, deadline))


def write_message(fd, header, arrays=None, deadline=None):
    """Write one message to ``fd``; with a ``deadline``, ``TimeoutError`` when the reader stops reading
    (the pipe stays full past it): a process that never reads cannot block the writer."""
    data = encode(header, arrays)
    view = memoryview(data)
    while view:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the process stopped reading before the time limit")
            _, ready, _ = select.select([], [fd], [], left)
            if not ready:
                raise TimeoutError("the process stopped reading before the time limit")
            k = os.write(fd, view[:select.PIPE_BUF if len(view) > select.PIPE_BUF else len(view)])
        else:
            k = os.write(fd, view)
        view = view[k:]
