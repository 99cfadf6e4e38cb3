"""A local HTTP server standing in for the Hugging Face hub and its CDN, plus checks of the fake itself.

Serves files with HTTP Range, JSON API pages with Link headers, gated paths (401/403), redirects, a
connection cut mid-file, and failing statuses. Every request is recorded so tests can bound and inspect them.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import httpx
import pytest


@dataclass(frozen=True)
class SeenRequest:
    method: str
    path: str
    range: str | None
    authorization: str | None


class FakeHub:
    """Configure the dicts, then use as a context manager; `url(path)` gives the full address."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.pages: dict[str, object] = {}  # path -> JSON body
        self.next_links: dict[str, str] = {}  # path -> URL of the next page
        self.redirects: dict[str, str] = {}  # path -> path to redirect to
        self.gated: dict[str, set[str]] = {}  # path prefix -> accepted tokens
        self.cut_once: set[str] = set()  # next GET sends half the body, then closes the connection
        self.fail_status: dict[str, int] = {}  # path -> status returned on every GET
        self.ignore_range = False
        self.requests: list[SeenRequest] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def gets(self, path: str) -> list[SeenRequest]:
        return [r for r in self.requests if r.method == "GET" and r.path == path]

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                self._answer(send_body=False)

            def do_GET(self) -> None:
                self._answer(send_body=True)

            def _answer(self, send_body: bool) -> None:
                path = urlsplit(self.path).path
                with hub._lock:
                    hub.requests.append(
                        SeenRequest(self.command, path, self.headers.get("Range"), self.headers.get("Authorization"))
                    )
                    cut = send_body and path in hub.cut_once
                    hub.cut_once.discard(path)
                for prefix, tokens in hub.gated.items():
                    if path.startswith(prefix):
                        auth = self.headers.get("Authorization")
                        if auth is None:
                            return self._plain(401, b"authentication required")
                        if auth.removeprefix("Bearer ") not in tokens:
                            return self._plain(403, b"access to this gated model is restricted")
                if path in hub.redirects:
                    self.send_response(302)
                    self.send_header("Location", hub.url(hub.redirects[path]))
                    self.send_header("Content-Length", "0")
                    return self.end_headers()
                if send_body and path in hub.fail_status:
                    return self._plain(hub.fail_status[path], b"failing on purpose")
                if path in hub.pages:
                    body = json.dumps(hub.pages[path]).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    if path in hub.next_links:
                        self.send_header("Link", f'<{hub.next_links[path]}>; rel="next"')
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    return self.wfile.write(body) if send_body else None
                if path in hub.files:
                    return self._file(hub.files[path], send_body, cut)
                return self._plain(404, b"not found")

            def _file(self, data: bytes, send_body: bool, cut: bool) -> None:
                start = 0
                wanted = self.headers.get("Range")
                if wanted and not hub.ignore_range:
                    start = int(wanted.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        return self._plain(416, b"range not satisfiable")
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not send_body:
                    return
                if cut:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def _plain(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

        return Handler


@pytest.fixture
def fake_hub():
    with FakeHub() as hub:
        yield hub


def test_fake_hub_serves_ranges_and_cuts(fake_hub):
    data = bytes(range(256)) * 40
    fake_hub.files["/f.safetensors"] = data
    fake_hub.cut_once.add("/f.safetensors")
    with httpx.Client() as client:
        with pytest.raises(httpx.RemoteProtocolError):
            client.get(fake_hub.url("/f.safetensors"))
        whole = client.get(fake_hub.url("/f.safetensors"))
        tail = client.get(fake_hub.url("/f.safetensors"), headers={"Range": "bytes=1000-"})
        past_end = client.get(fake_hub.url("/f.safetensors"), headers={"Range": f"bytes={len(data)}-"})
    assert whole.content == data
    assert tail.status_code == 206 and tail.content == data[1000:]
    assert tail.headers["Content-Range"] == f"bytes 1000-{len(data) - 1}/{len(data)}"
    assert past_end.status_code == 416
    assert [r.range for r in fake_hub.gets("/f.safetensors")] == [None, None, "bytes=1000-", f"bytes={len(data)}-"]


def test_fake_hub_gates_by_token(fake_hub):
    fake_hub.files["/gated/x.json"] = b"{}"
    fake_hub.gated["/gated/"] = {"good"}
    with httpx.Client() as client:
        codes = [
            client.get(fake_hub.url("/gated/x.json"), headers=h).status_code
            for h in ({}, {"Authorization": "Bearer bad"}, {"Authorization": "Bearer good"})
        ]
    assert codes == [401, 403, 200]
