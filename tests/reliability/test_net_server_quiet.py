"""The loopback server (demo, tests) stays quiet when clients hang up, and loud on real errors.

Defect: ``make demo`` printed a ``ConnectionResetError`` traceback from the server whenever
the downloader dropped a connection on purpose (an HTML page, a timeout).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import REPO

SCRIPT = textwrap.dedent(
    """
    import socket, struct, sys, time
    from faces_core.testing import LoopbackServer, Route

    def reset(sock):
        # Close with RST (SO_LINGER 0), as a client does that drops unread data.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    def request(port, path):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(f"GET {path} HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n".encode())
        return sock

    with LoopbackServer() as server:
        server.add("/small.jpg", Route(b"x" * 1000))
        server.add("/drip.jpg", Route(b"y" * 1000, chunk_size=10, chunk_delay=0.02))
        server.add("/endless.jpg", Route(b"z" * 4096, endless=True))
        # 1. the answer was sent; the client resets while the server waits for its next request
        sock = request(server.port, "/small.jpg")
        sock.recv(100)
        time.sleep(0.2)
        reset(sock)
        # 2. reset in the middle of a slow drip, and 3. of an endless body
        for path in ("/drip.jpg", "/endless.jpg"):
            sock = request(server.port, path)
            sock.recv(50)
            reset(sock)
        # 4. reset in the middle of the request line
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.sendall(b"GET /sm")
        time.sleep(0.1)
        reset(sock)
        time.sleep(0.5)  # let every handler meet its dead connection
        if len(sys.argv) > 1:
            try:
                raise ValueError("a real bug in a handler")
            except ValueError:
                server._httpd.handle_error(None, ("127.0.0.1", 0))
    print("done")
    """
)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, *args], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )


def test_client_disconnects_print_no_traceback() -> None:
    result = _run()
    assert result.returncode == 0 and result.stdout.strip() == "done"
    assert result.stderr == ""


def test_other_handler_errors_still_print_their_traceback() -> None:
    result = _run("with-bug")
    assert result.returncode == 0
    assert "Traceback" in result.stderr and "ValueError: a real bug in a handler" in result.stderr
    assert "ConnectionResetError" not in result.stderr and "BrokenPipeError" not in result.stderr
