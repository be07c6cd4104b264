"""Tiny purpose-made HTTP servers that misbehave on cue, for the load generator's tests.

    python tests/loadgen_servers.py BEHAVIOUR FILE [N]

prints `READY http://127.0.0.1:PORT/` and serves FILE's bytes for every GET, on one
thread with a selectors loop (keep-alive, pipelining). On SIGTERM it prints `COUNT n`
(requests received) and exits. Behaviours:

  ok        answer every request correctly
  corrupt   flip one byte of the body of every N-th response
  stall     after N responses, stop the whole server for 1 second, once
  reset     answer nothing: reset the connection (RST) on every request
  short     send the head and half the body, then close
  chunked   correct body, Transfer-Encoding: chunked, in three chunks
  http10    HTTP/1.0 response without Content-Length, body delimited by the close
  silent    read requests, never answer
  close     a correct response saying `Connection:close`, then close the connection
  vary      correct responses whose head changes every N-th response (as a Date header does)
"""

from __future__ import annotations

import selectors
import signal
import socket
import struct
import sys
import time

HEAD = "HTTP/1.1 200 OK\r\nServer: misbehaving\r\nContent-Type: application/octet-stream\r\nContent-Length: {n}\r\n\r\n"


def main() -> int:
    behaviour, path = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    body = open(path, "rb").read()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(512)
    listener.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, None)
    state = {"count": 0, "responses": 0, "stalled": False, "stop": False}
    buffers: dict[socket.socket, bytes] = {}

    def stop(*_: object) -> None:
        state["stop"] = True

    signal.signal(signal.SIGTERM, stop)
    print(f"READY http://127.0.0.1:{listener.getsockname()[1]}/", flush=True)

    def respond(conn: socket.socket) -> bool:
        """Answer one request; False when the connection is finished."""
        state["count"] += 1
        state["responses"] += 1
        k = state["responses"]
        if behaviour == "silent":
            return True
        if behaviour == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        if behaviour == "stall" and k > n and not state["stalled"]:
            state["stalled"] = True
            time.sleep(1.0)
        data = body
        if behaviour == "corrupt" and k % n == 0:
            data = bytearray(body)
            data[len(data) // 2] ^= 0x01
            data = bytes(data)
        if behaviour == "short":
            conn.setblocking(True)
            conn.sendall(HEAD.format(n=len(body)).encode() + data[: len(data) // 2])
            return False
        if behaviour == "chunked":
            thirds = [data[: len(data) // 3], data[len(data) // 3 : 2 * len(data) // 3], data[2 * len(data) // 3 :]]
            out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            out += b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in thirds if c) + b"0\r\n\r\n"
        elif behaviour == "close":
            conn.setblocking(True)
            conn.sendall(HEAD.format(n=len(data)).replace("\r\n\r\n", "\r\nConnection:close\r\n\r\n").encode() + data)
            return False
        elif behaviour == "http10":
            conn.setblocking(True)
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n" + data)
            return False
        elif behaviour == "vary":
            head = HEAD.format(n=len(data)).replace("\r\n\r\n", f"\r\nX-Seq: {k // n}\r\n\r\n")
            out = head.encode() + data
        else:
            out = HEAD.format(n=len(data)).encode() + data
        conn.setblocking(True)  # keep it simple: small bodies, local clients
        conn.sendall(out)
        conn.setblocking(False)
        return True

    while not state["stop"]:
        for key, _ in sel.select(0.2):
            if key.data is None:
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    continue
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                buffers[conn] = b""
                sel.register(conn, selectors.EVENT_READ, "conn")
                continue
            conn = key.fileobj
            try:
                data = conn.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            alive = bool(data)
            buf = buffers[conn] + data
            while alive and b"\r\n\r\n" in buf:
                _, buf = buf.split(b"\r\n\r\n", 1)
                try:
                    alive = respond(conn)
                except OSError:
                    alive = False
            buffers[conn] = buf
            if not alive:
                sel.unregister(conn)
                del buffers[conn]
                conn.close()
    print(f"COUNT {state['count']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
