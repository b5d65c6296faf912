#!/usr/bin/env python3
"""Attacks on a running http_echo (examples/http_echo.rs) from outside, with numbers.

    cargo build --release --example http_echo
    python3 tests/attacks/attack.py target/release/examples/http_echo

Starts the server itself (plain + TLS on 127.0.0.1, ports from the kernel), runs each attack,
prints one line per result, and kills the server at the end. The fd-exhaustion attack starts
a second server under `ulimit -n 256`. Only loopback is used.
"""

import os
import socket
import ssl
import subprocess
import sys
import threading
import time

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/examples/http_echo"
RESULTS = []


def report(name, ok, detail):
    line = f"{'PASS' if ok else 'FAIL'}  {name}: {detail}"
    RESULTS.append((ok, line))
    print(line, flush=True)


def start(extra=(), ulimit=None, log="warn"):
    cmd = [BIN, "127.0.0.1:0", "--tls", *extra]
    if ulimit:
        cmd = ["bash", "-c", f"ulimit -n {ulimit}; exec " + " ".join(cmd)]
    err = open(f"/tmp/http_echo_{os.getpid()}_{len(RESULTS)}.log", "w")
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                         env={**os.environ, "ECHO_LOG": log})
    http = int(p.stdout.readline().split()[1])
    https = int(p.stdout.readline().split()[1])
    return p, http, https, err.name


def status_field(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])  # kB
    return -1


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def threads(pid):
    return len(os.listdir(f"/proc/{pid}/task"))


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def conn(port, timeout=10):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_head(s):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def status_of(data):
    try:
        return int(data.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None


def get(port, path="/echo", timeout=10):
    t0 = time.monotonic()
    s = conn(port, timeout)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
    st = status_of(read_head(s))
    s.close()
    return st, time.monotonic() - t0


def healthy(port):
    st, took = get(port)
    return st == 200, f"then GET {st} in {took*1000:.1f} ms"


def pour(s, total, fill=b"a", piece=1 << 20):
    """Send `total` bytes from a thread; returns a dict filled with the count sent."""
    out = {"sent": 0, "error": None}

    def run():
        buf = fill * piece
        try:
            while out["sent"] < total:
                n = s.send(buf[: min(piece, total - out["sent"])])
                out["sent"] += n
        except OSError as e:
            out["error"] = type(e).__name__

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return out, t


def attack_huge_content_length(pid, port):
    s = conn(port)
    t0 = time.monotonic()
    s.sendall(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000000000\r\n\r\n")
    st = status_of(read_head(s))
    took = time.monotonic() - t0
    s.close()
    alive = os.path.exists(f"/proc/{pid}")
    ok, h = healthy(port)
    report("Content-Length 1e12", st == 413 and took < 0.5 and alive and ok,
           f"{st} in {took*1000:.1f} ms, server alive={alive}, {h}")


def attack_40mib_body(pid, port):
    s = conn(port)
    total = 40 << 20
    t0 = time.monotonic()
    s.sendall(f"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: {total}\r\n\r\n".encode())
    out, t = pour(s, total, b"x")
    st = status_of(read_head(s))
    took = time.monotonic() - t0
    t.join(10)
    s.close()
    ok, h = healthy(port)
    report("40 MiB body while sending", st == 413 and ok,
           f"{st} after {took*1000:.1f} ms while sending; client sent {out['sent']>>20} MiB "
           f"({out['error'] or 'all'}); {h}")


def attack_header_bomb(pid, port):
    before = status_field(pid, "VmRSS")
    s = conn(port)
    total = 100 << 20
    t0 = time.monotonic()
    s.sendall(b"GET /echo HTTP/1.1\r\nHost: a\r\nX-Bomb: ")
    out, t = pour(s, total, b"a")
    st = status_of(read_head(s))
    took = time.monotonic() - t0
    t.join(10)
    s.close()
    hwm, rss = status_field(pid, "VmHWM"), status_field(pid, "VmRSS")
    ok, h = healthy(port)
    report("100 MiB header line", st == 431 and hwm < 64 * 1024 and ok,
           f"{st} in {took*1000:.1f} ms; client got {out['sent']>>20} MiB out before "
           f"{out['error'] or 'finishing'}; RSS {before} -> {rss} kB, VmHWM {hwm} kB; {h}")


def attack_stalled(pid, port, n):
    socks = []
    for _ in range(n):
        s = conn(port, 30)
        s.sendall(b"GET /echo HTTP/1.1\r\nHost: a\r\nX-Half: ")
        socks.append(s)
    time.sleep(0.3)
    st, took = get(port)
    t0 = time.monotonic()
    closed = 0
    silent = True
    for s in socks:
        try:
            data = s.recv(100)
            silent = silent and data == b""
        except OSError:
            pass
        closed += 1
    waited = time.monotonic() - t0 + 0.3
    for s in socks:
        s.close()
    report(f"{n} stalled half-heads", st == 200 and took < 0.1 and silent,
           f"normal GET {st} in {took*1000:.1f} ms meanwhile; all {closed} closed silently={silent} "
           f"after ~{waited:.1f} s; threads now {threads(pid)}")


def attack_burst(pid, port):
    ok_total = 0
    t0 = time.monotonic()
    socks = [conn(port) for _ in range(100)]
    for _round in range(3):
        for s in socks:
            s.sendall(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
        for s in socks:
            if status_of(read_head(s)) == 200:
                ok_total += 1
    took = time.monotonic() - t0
    rss, thr = status_field(pid, "VmRSS"), threads(pid)
    for s in socks:
        s.close()
    report("burst 100 keep-alive x3", ok_total == 300,
           f"{ok_total}/300 answered in {took*1000:.0f} ms; RSS with 100 open {rss} kB, threads {thr}")


def client_hello(max_version):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if max_version:
        ctx.maximum_version = max_version
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


def get_tls(port):
    t0 = time.monotonic()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    s = ctx.wrap_socket(conn(port), server_hostname="localhost")
    s.sendall(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
    st = status_of(read_head(s))
    s.close()
    return st, time.monotonic() - t0


def attack_tls_hello_close_notify(pid, tls_port):
    results = []
    for label, ver in (("TLS1.2", ssl.TLSVersion.TLSv1_2), ("TLS1.3", None)):
        hello = client_hello(ver)
        socks = []
        for _ in range(20):
            s = conn(tls_port)
            s.sendall(hello)
            s.sendall(b"\x15\x03\x03\x00\x02\x01\x00")  # close_notify alert, socket left open
            socks.append(s)
        time.sleep(0.5)
        c0 = cpu_seconds(pid)
        time.sleep(3)
        used = cpu_seconds(pid) - c0
        for s in socks:
            s.close()
        results.append((label, used))
    worst = max(u for _, u in results)
    st, took = get_tls(tls_port)
    report("TLS ClientHello + close_notify (20 each)", worst < 0.05 and st == 200,
           ", ".join(f"{l}: {u/3*100:.1f}% CPU over 3 s" for l, u in results)
           + f"; then HTTPS GET {st} in {took*1000:.1f} ms")


def attack_sse_timing(port, tls_port):
    for label, p, wrap in (("HTTP", port, False), ("HTTPS", tls_port, True)):
        s = conn(p)
        if wrap:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            s = ctx.wrap_socket(s, server_hostname="localhost")
        s.sendall(b"GET /stream?n=5&ms=200 HTTP/1.1\r\nHost: a\r\n\r\n")
        t0 = time.monotonic()
        times, data = [], b""
        while data.count(b"data: ") < 5:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            times.extend([time.monotonic() - t0] * chunk.count(b"data: "))
        s.close()
        gaps = [b - a for a, b in zip(times, times[1:])]
        report(f"SSE 5 events 200 ms apart ({label})", len(times) == 5 and min(gaps) > 0.15,
               "arrivals " + ", ".join(f"{t*1000:.0f}" for t in times) + " ms")


def attack_misc(port):
    cases = [
        ("garbage", os.urandom(4096) + b"\r\n\r\n", 400),
        ("1 MB request line", b"GET /" + b"a" * (1 << 20) + b" HTTP/1.1\r\n\r\n", 431),
        ("1,000 headers", b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(1000)) + b"\r\n", 431),
        ("invalid chunk size", b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n", 400),
        ("chunk size overflow", b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\n", 400),
        ("both CL and TE", b"POST /echo HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 400),
    ]
    for name, payload, want in cases:
        s = conn(port)
        t0 = time.monotonic()
        try:
            s.sendall(payload)
        except OSError:
            pass
        st = status_of(read_head(s))
        took = time.monotonic() - t0
        s.close()
        report(name, st == want, f"{st} in {took*1000:.1f} ms")
    # An endless chunked body: 413 once over 32 MiB.
    s = conn(port)
    s.sendall(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    piece = (b"%x\r\n" % 65536) + b"z" * 65536 + b"\r\n"
    out = {"sent": 0, "error": None}

    def endless():
        try:
            while True:
                s.sendall(piece * 16)
                out["sent"] += len(piece) * 16
        except OSError as e:
            out["error"] = type(e).__name__

    t0 = time.monotonic()
    threading.Thread(target=endless, daemon=True).start()
    st = status_of(read_head(s))
    took = time.monotonic() - t0
    time.sleep(0.5)
    s.close()
    report("endless chunked body", st == 413,
           f"{st} after {took*1000:.0f} ms and {out['sent']>>20} MiB sent")
    # Pipelining: two requests in one write.
    s = conn(port)
    s.sendall(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\nPOST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
    time.sleep(0.2)
    data = s.recv(65536)
    s.close()
    report("2 pipelined requests", data.count(b"HTTP/1.1 200") == 2 and data.endswith(b"hi"),
           f"{data.count(b'HTTP/1.1 200')} responses")


def attack_fd_exhaustion():
    p, port, tls_port, log = start(ulimit=256)
    try:
        socks = []
        refused = 0
        for _ in range(400):
            try:
                socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            except OSError:
                refused += 1
        time.sleep(1)
        c0 = cpu_seconds(p.pid)
        time.sleep(3)
        cpu = (cpu_seconds(p.pid) - c0) / 3 * 100
        open_fds = fds(p.pid)
        for s in socks:
            s.close()
        time.sleep(1.0)
        st, took = get(port)
        with open(log) as f:
            warns = [l for l in f if "accept failed" in l]
        report("fd exhaustion (ulimit -n 256, 400 connections)", st == 200 and cpu < 5,
               f"{len(socks)} connected ({refused} refused), server fds {open_fds}, CPU while "
               f"exhausted {cpu:.1f}%, {len(warns)} WARN line(s); after closing: GET {st} in "
               f"{took*1000:.1f} ms")
    finally:
        p.kill()


def main():
    p, port, tls_port, log = start()
    pid = p.pid
    try:
        time.sleep(0.3)
        idle = status_field(pid, "VmRSS")
        get(port)
        report("idle RSS", True, f"{idle} kB at start, {status_field(pid, 'VmRSS')} kB after one "
               f"request, threads {threads(pid)}")
        attack_huge_content_length(pid, port)
        attack_40mib_body(pid, port)
        attack_header_bomb(pid, port)
        attack_stalled(pid, port, 50)
        attack_stalled(pid, port, 300)
        attack_burst(pid, port)
        attack_tls_hello_close_notify(pid, tls_port)
        attack_sse_timing(port, tls_port)
        attack_misc(port)
        report("final", True, f"RSS {status_field(pid, 'VmRSS')} kB, VmHWM "
               f"{status_field(pid, 'VmHWM')} kB, threads {threads(pid)}, fds {fds(pid)}")
    finally:
        p.kill()
    attack_fd_exhaustion()
    failed = [l for ok, l in RESULTS if not ok]
    print(f"\n{len(RESULTS) - len(failed)}/{len(RESULTS)} passed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
