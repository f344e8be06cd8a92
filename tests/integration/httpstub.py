"""A local HTTP server for the tests of outbound HTTP (plugins' http module, the connect hook):
Python's http.server in a thread, on a free loopback port, started and stopped by the test.

Routes:
  /echo            200, JSON {method, path, headers, body}; headers X-Stub: yes, Set-Thing twice
  /status/N        status N, body "status N"
  /slow?ms=N       waits N ms, then 200 "slow done"
  /hang            never answers; sets `hang_closed` once the client goes away (and counts it)
  /big?n=N         200 with N bytes of "x" (Content-Length given)
  /bigchunked?n=N  200 with N bytes, chunked (no Content-Length)
  /redirect        302 to /echo on another loopback address (127.0.0.2)
  /hook            the connect hook: answers what `hook_answer` says (see set_hook)
Every request is recorded in `requests` (method, path, headers, body).
"""
import http.server
import json
import select
import threading
import time
import urllib.parse


class Stub:
    def __init__(self):
        self.requests = []
        self.hang_closed = threading.Event()
        self.hangs_started = 0
        self.hangs_closed = 0
        self.hook_status = 200
        self.hook_body = {"result": "accept"}
        self.hook_delay = 0.0
        self.lock = threading.Lock()
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _body(self):
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _send(self, status, body, ctype="text/plain", extra=()):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in extra:
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _route(self):
                body = self._body()
                u = urllib.parse.urlsplit(self.path)
                q = dict(urllib.parse.parse_qsl(u.query))
                with stub.lock:
                    stub.requests.append({"method": self.command, "path": self.path,
                                          "headers": dict(self.headers.items()),
                                          "body": body.decode("utf-8", "replace")})
                p = u.path
                if p == "/echo":
                    out = json.dumps({"method": self.command, "path": self.path,
                                      "headers": {k.lower(): v for k, v in self.headers.items()},
                                      "body": body.decode("utf-8", "replace")}).encode()
                    self._send(200, out, "application/json",
                               [("X-Stub", "yes"), ("Set-Thing", "a"), ("Set-Thing", "b")])
                elif p.startswith("/status/"):
                    n = int(p.split("/")[2])
                    self._send(n, f"status {n}".encode())
                elif p == "/slow":
                    time.sleep(int(q.get("ms", "500")) / 1000.0)
                    self._send(200, b"slow done")
                elif p == "/hang":
                    with stub.lock:
                        stub.hangs_started += 1
                    # wait until the client closes its end (readable + EOF) or 60 s
                    deadline = time.monotonic() + 60
                    while time.monotonic() < deadline:
                        r, _, _ = select.select([self.connection], [], [], 0.1)
                        if r:
                            try:
                                if not self.connection.recv(1):
                                    break
                            except OSError:
                                break
                    with stub.lock:
                        stub.hangs_closed += 1
                    stub.hang_closed.set()
                    self.close_connection = True
                elif p == "/big":
                    self._send(200, b"x" * int(q.get("n", "0")))
                elif p == "/bigchunked":
                    n = int(q.get("n", "0"))
                    self.send_response(200)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    left = n
                    while left > 0:
                        k = min(left, 65536)
                        self.wfile.write(b"%x\r\n" % k + b"x" * k + b"\r\n")
                        left -= k
                    self.wfile.write(b"0\r\n\r\n")
                elif p == "/redirect":
                    port = self.server.server_address[1]
                    self._send(302, b"", extra=[("Location", f"http://127.0.0.2:{port}/echo")])
                elif p == "/hook":
                    if stub.hook_delay:
                        time.sleep(stub.hook_delay)
                    b = stub.hook_body
                    out = b if isinstance(b, bytes) else json.dumps(b).encode()
                    self._send(stub.hook_status, out, "application/json")
                else:
                    self._send(404, b"not found")

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _route

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, address: None  # a client that went away
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def set_hook(self, status=200, body=None, delay=0.0):
        self.hook_status = status
        self.hook_body = {"result": "accept"} if body is None else body
        self.hook_delay = delay

    def hook_requests(self):
        with self.lock:
            return [r for r in self.requests if r["path"] == "/hook"]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *a):
        self.httpd.shutdown()
        self.httpd.server_close()
        return False
