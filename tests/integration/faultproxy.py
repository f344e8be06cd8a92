"""A fault-injecting TCP proxy between a node and redis-server, for the cluster fault tests.

One FaultProxy listens on a free loopback port and forwards every accepted connection to the
upstream (redis-server). It runs its own thread (a selector loop), so the tests' blocking calls
(time.sleep, redis-cli) never stall the traffic it carries. Faults, all on every connection the
proxy carries (give each node its own proxy to fault one node):

- drop(seconds): closes every current connection at once (FIN to the node, the upstream side is
  closed too) and, for `seconds`, accepts new connections and closes them straight away.
- drop_commands(seconds): as drop(), but only the connections that never carried an XREAD (the
  node's command connection); its reading connection stays up.
- reset(): closes every current connection with an RST to the node.
- hold(): stops forwarding both ways. Bytes keep being read into buffers, so the proxy notices a
  node closing its socket; such a socket's unsent bytes are kept with its upstream connection, as
  the kernel keeps retransmitting a closed socket's data. New connections are accepted and held.
- heal(stale_after=0.0): ends a hold. Live connections resume at once; the buffered bytes of
  sockets the node closed meanwhile reach Redis `stale_after` seconds later (0: before anything
  else), then those upstream connections close. This is "the node gave up on a command, and it
  executed in Redis anyway, late".
- delay(seconds): every chunk is forwarded `seconds` after it was read (both ways); 0 ends it.

Counters (connections accepted, stale bytes delivered) are there for the tests' figures.
"""
import errno
import selectors
import socket
import struct
import threading
import time


class _Pipe:
    """One proxied connection: the node's socket (down) and the upstream one (up)."""

    def __init__(self, down, up):
        self.down, self.up = down, up
        self.to_up = []     # [(due, bytes)] read from the node, not yet written upstream
        self.to_down = []   # [(due, bytes)] read from Redis, not yet written to the node
        self.down_closed = False   # the node closed (or reset) its socket
        self.stale = False  # down closed while held: deliver to_up late, then close
        self.stale_at = None
        self.reads = False  # it carried an XREAD: the node's reading connection


class FaultProxy:
    def __init__(self, upstream_port, upstream_host="127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(128)
        self.lsock.setblocking(False)
        self.port = self.lsock.getsockname()[1]
        self.sel = selectors.DefaultSelector()
        self.lock = threading.Lock()
        self.pipes = []
        self.held = False
        self.refuse_until = 0.0
        self.delay_s = 0.0
        self.accepted = 0
        self.stale_bytes = 0
        self.stale_conns = 0
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._stop = False
        self.sel.register(self.lsock, selectors.EVENT_READ, "listen")
        self.sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self.thread = threading.Thread(target=self._run, name=f"faultproxy:{self.port}", daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}"

    # -- commands (from the test's thread)

    def _wake(self):
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def drop(self, seconds):
        with self.lock:
            self.refuse_until = time.monotonic() + seconds
            for p in list(self.pipes):
                self._close_pipe(p)
        self._wake()

    def drop_commands(self, seconds):
        """drop(seconds) of the command connections only: every connection that never carried an
        XREAD is closed, and new connections are refused for `seconds`; the reading connection
        stays up (a node whose connections come back one at a time)."""
        with self.lock:
            self.refuse_until = time.monotonic() + seconds
            for p in list(self.pipes):
                if not p.reads:
                    self._close_pipe(p)
        self._wake()

    def reset(self):
        with self.lock:
            for p in list(self.pipes):
                self._close_pipe(p, rst=True)
        self._wake()

    def hold(self):
        with self.lock:
            self.held = True
        self._wake()

    def heal(self, stale_after=0.0):
        with self.lock:
            self.held = False
            now = time.monotonic()
            for p in self.pipes:
                if p.stale:
                    p.stale_at = now + stale_after
        self._wake()

    def delay(self, seconds):
        with self.lock:
            self.delay_s = seconds
        self._wake()

    def stale_pending(self):
        """Number of closed sockets whose buffered bytes have not reached Redis yet."""
        with self.lock:
            return sum(1 for p in self.pipes if p.stale)

    def close(self):
        self._stop = True
        self._wake()
        self.thread.join(timeout=3)
        with self.lock:
            for p in list(self.pipes):
                self._close_pipe(p)
        for s in (self.lsock, self._wake_r, self._wake_w):
            try:
                s.close()
            except OSError:
                pass
        self.sel.close()

    # -- the loop (proxy thread); every state change happens under self.lock

    def _close_sock(self, s, rst=False):
        if s is None:
            return
        try:
            self.sel.unregister(s)
        except (KeyError, ValueError):
            pass
        if rst:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        try:
            s.close()
        except OSError:
            pass

    def _close_pipe(self, p, rst=False):
        if p in self.pipes:
            self.pipes.remove(p)
        if not p.down_closed:
            self._close_sock(p.down, rst)
            p.down_closed = True
        self._close_sock(p.up)
        p.up = None

    def _accept(self):
        try:
            s, _ = self.lsock.accept()
        except OSError:
            return
        if time.monotonic() < self.refuse_until:
            s.close()
            return
        try:
            up = socket.create_connection(self.upstream, timeout=2)
        except OSError:
            s.close()
            return
        s.setblocking(False)
        up.setblocking(False)
        p = _Pipe(s, up)
        self.pipes.append(p)
        self.accepted += 1
        self.sel.register(s, selectors.EVENT_READ, ("down", p))
        self.sel.register(up, selectors.EVENT_READ, ("up", p))

    def _read(self, side, p):
        s = p.down if side == "down" else p.up
        try:
            data = s.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            if side == "down" and b"XREAD" in data:
                p.reads = True
            due = time.monotonic() + self.delay_s
            (p.to_up if side == "down" else p.to_down).append((due, data))
            return
        if side == "up":       # Redis closed: so does the node's side
            self._close_pipe(p)
            return
        # the node closed its socket
        self._close_sock(p.down)
        p.down_closed = True
        p.to_down.clear()
        if self.held or p.stale:
            p.stale = True     # its bytes stay in flight, delivered at heal()
        elif not p.to_up:
            self._close_pipe(p)

    def _flush(self, now):
        """Writes what is due; returns the next due time (or None)."""
        nxt = None
        for p in list(self.pipes):
            if p.stale:
                if p.stale_at is None or now < p.stale_at:
                    if p.stale_at is not None:
                        nxt = p.stale_at if nxt is None else min(nxt, p.stale_at)
                    continue
                data = b"".join(d for _, d in p.to_up)
                p.to_up.clear()
                try:
                    p.up.setblocking(True)
                    p.up.sendall(data)
                except OSError:
                    pass
                self.stale_bytes += len(data)
                self.stale_conns += 1
                # let Redis read it before the close (a closed peer's data is still executed,
                # but give the kernel a moment)
                p.stale = False
                p.stale_at = now + 0.2
                continue
            if p.down_closed:
                if p.stale_at is not None and now >= p.stale_at:
                    self._close_pipe(p)
                elif p.stale_at is not None:
                    nxt = p.stale_at if nxt is None else min(nxt, p.stale_at)
                elif not p.to_up:
                    self._close_pipe(p)
                if p.down_closed and p.stale_at is None and p.to_up and not self.held:
                    nxt = self._write_due(p, "up", now, nxt)
                continue
            if self.held:
                continue
            nxt = self._write_due(p, "up", now, nxt)
            if p in self.pipes:
                nxt = self._write_due(p, "down", now, nxt)
        return nxt

    def _write_due(self, p, which, now, nxt):
        q = p.to_up if which == "up" else p.to_down
        s = p.up if which == "up" else p.down
        while q and q[0][0] <= now:
            data = q[0][1]
            try:
                n = s.send(data)
            except (BlockingIOError, InterruptedError):
                return now + 0.005 if nxt is None else min(nxt, now + 0.005)
            except OSError as e:
                if e.errno not in (errno.EAGAIN,):
                    self._close_pipe(p)
                return nxt
            if n < len(data):
                q[0] = (q[0][0], data[n:])
                return now + 0.005 if nxt is None else min(nxt, now + 0.005)
            q.pop(0)
        if q:
            nxt = q[0][0] if nxt is None else min(nxt, q[0][0])
        return nxt

    def _run(self):
        nxt = None
        while not self._stop:
            timeout = 0.05 if nxt is None else max(0.0, min(0.05, nxt - time.monotonic()))
            events = self.sel.select(timeout)
            with self.lock:
                for key, _ in events:
                    tag = key.data
                    if tag == "listen":
                        self._accept()
                    elif tag == "wake":
                        try:
                            self._wake_r.recv(4096)
                        except OSError:
                            pass
                    else:
                        side, p = tag
                        if p in self.pipes:
                            self._read(side, p)
                nxt = self._flush(time.monotonic())
