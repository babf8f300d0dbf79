"""What TLS costs the board, on both heaps, measured on the unix port's real mbedTLS (3.6).

MicroPython's `tls` keeps only its objects on the Python (GC) heap: the SSLContext, with the
mbedTLS config, entropy and DRBG state inside it, and one small SSLSocket per connection.
mbedTLS's own buffers and handshake state come from the C heap: `calloc` on the unix port,
the ESP-IDF heap on an ESP32 (CONFIG_MBEDTLS_DEFAULT_MEM_ALLOC; extmod/modtls_mbedtls.c, the
ports' mbedtls configs), so `-X heapsize` / the 64 KB budget never sees them. The C heap is
measured here with a small LD_PRELOAD counter of live malloc'd bytes (built with the system C
compiler; the test skips without one), read at markers the script sets with `os.getenv`.

The firmware's own `session.tls_context` is used, three connections in a row to a Python
TLS server with a P-256 certificate from `ferry.certs` (what the gateway serves): the figures
per connection, their peak during the handshake, and nothing left behind after `close()`.
docs/device.md ("TLS") quotes what this prints.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry.certs import CertificateAuthority
from ferry.hwsim.fleet import ca_der
from ferry.hwsim.micropython import run_code
from tests.device.fw_support import DEVICE_DIR
from tests.device.helpers import UNIX_HEAP_FOR_64K_ESP32

COUNTER_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void __libc_free(void *);
extern void *__libc_memalign(size_t, size_t);
extern char **environ;
static long cur, peak;
static void add(long n) { long c = __atomic_add_fetch(&cur, n, __ATOMIC_RELAXED); if (c > peak) peak = c; }
void *malloc(size_t n) { void *p = __libc_malloc(n); if (p) add(malloc_usable_size(p)); return p; }
void *calloc(size_t a, size_t b) { void *p = __libc_calloc(a, b); if (p) add(malloc_usable_size(p)); return p; }
void free(void *p) { if (p) { add(-(long)malloc_usable_size(p)); __libc_free(p); } }
void *realloc(void *p, size_t n) {
    long old = p ? (long)malloc_usable_size(p) : 0;
    void *q = __libc_realloc(p, n);
    if (q) add((long)malloc_usable_size(q) - old); else if (n == 0 && p) add(-old);
    return q;
}
void *memalign(size_t a, size_t n) { void *p = __libc_memalign(a, n); if (p) add(malloc_usable_size(p)); return p; }
void *aligned_alloc(size_t a, size_t n) { return memalign(a, n); }
int posix_memalign(void **r, size_t a, size_t n) { void *p = memalign(a, n); if (!p) return ENOMEM; *r = p; return 0; }
/* getenv("MALLOC_MARK:<label>") prints the live bytes and the peak since the last mark. */
char *getenv(const char *name) {
    if (strncmp(name, "MALLOC_MARK:", 12) == 0) {
        char buf[160];
        int k = snprintf(buf, sizeof buf, "MALLOC %s %ld %ld\n", name + 12, cur, peak);
        write(2, buf, k);
        peak = cur;
        return NULL;
    }
    size_t l = strlen(name);
    for (char **e = environ; e && *e; e++) if (strncmp(*e, name, l) == 0 && (*e)[l] == '=') return *e + l + 1;
    return NULL;
}
"""

SCRIPT = r"""
import gc, json, os, socket
from session import tls_context
def mark(label):
    os.getenv("MALLOC_MARK:" + label)
def free():
    gc.collect()
    return gc.mem_free()
r = [0] * 12  # preallocated: a growing dict would count as TLS
ss = s = got = None
f0 = free()
mark("start")
ctx = tls_context(%(ca)r)
mark("context")
r[0] = f0 - free()
addr = socket.getaddrinfo("127.0.0.1", %(port)d)[0][-1]
f1 = free()
for i in range(3):
    s = socket.socket()
    s.settimeout(5)
    s.connect(addr)
    mark("tcp%%d" %% i)
    gc.collect()
    gc.disable()
    a0 = gc.mem_alloc()
    ss = ctx.wrap_socket(s, server_hostname="127.0.0.1")
    r[1 + 3 * i] = gc.mem_alloc() - a0
    gc.enable()
    mark("handshake%%d" %% i)
    ss.write(b"x" * 300)
    got = ss.read(300)
    assert got == b"x" * 300
    mark("io%%d" %% i)
    r[2 + 3 * i] = f1 - free()
    ss.close()
    ss = s = got = None
    mark("closed%%d" %% i)
    r[3 + 3 * i] = f1 - free()
print(json.dumps({"context": r[0], "handshake_alloc": r[1:10:3], "connection": r[2:11:3], "closed": r[3:12:3]}))
"""

HW_STUB = "def log(msg):\n    print('ferry 0 ' + msg)\n"


@pytest.fixture
def counter(tmp_path: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler for the malloc counter")
    source = tmp_path / "counter.c"
    source.write_text(COUNTER_C)
    library = tmp_path / "counter.so"
    result = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(library), str(source)], capture_output=True,
                            text=True)
    if result.returncode != 0:
        pytest.skip(f"the malloc counter does not build here (glibc only): {result.stderr[-300:]}")
    return library


@pytest.fixture
def echo_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A TLS echo server with a certificate for 127.0.0.1 from a new CA; yields (port, CA as DER on disk)."""
    ca = CertificateAuthority(tmp_path / "ca")
    pair = ca.server()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pair.cert, pair.key)
    listener = socket.create_server(("127.0.0.1", 0))
    der = tmp_path / "ca.der"
    der.write_bytes(ca_der(ca.pair.cert))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.settimeout(5)
                    while data := tls.recv(4096):
                        tls.sendall(data)
            except (OSError, ssl.SSLError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], der
    finally:
        listener.close()
        thread.join(5)


def test_tls_heap_cost_per_connection(tmp_path: Path, counter: Path, echo_server: tuple[int, Path],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    port, der = echo_server
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "hw.py").write_text(HW_STUB)
    monkeypatch.setenv("LD_PRELOAD", str(counter))
    result = run_code(SCRIPT % {"ca": str(der), "port": port}, sys_path=(stub, DEVICE_DIR),
                      heap_bytes=UNIX_HEAP_FOR_64K_ESP32, timeout_s=60)
    assert result.returncode == 0, result.stdout + result.stderr
    gc_heap = json.loads(result.stdout.strip().splitlines()[-1])
    marks = {m.group(1): (int(m.group(2)), int(m.group(3)))
             for m in re.finditer(r"MALLOC (\S+) (-?\d+) (-?\d+)", result.stderr)}
    assert {"start", "context", "closed2"} <= set(marks), result.stderr[-2000:]

    context_c = marks["context"][0] - marks["start"][0]
    connected = [marks[f"handshake{i}"][0] - marks[f"tcp{i}"][0] for i in range(3)]
    handshake_peak = [marks[f"handshake{i}"][1] - marks[f"tcp{i}"][0] for i in range(3)]
    left_behind = [marks[f"closed{i}"][0] - marks["tcp0"][0] for i in range(3)]
    print(f"\nTLS on the unix port, mbedTLS 3.6 (IN_CONTENT_LEN 16384, OUT 4096), P-256 certificates, TLS 1.2 "
          f"ECDHE-ECDSA, 3 connections in a row:\n  Python (GC) heap: SSLContext with the CA {gc_heap['context']} B; "
          f"per open connection {gc_heap['connection']} B (allocated during the handshake "
          f"{gc_heap['handshake_alloc']} B); after close {gc_heap['closed']} B\n  C heap (mbedTLS): context + CA "
          f"{context_c} B; per open connection {connected} B, peak during the handshake {handshake_peak} B; after "
          f"close {left_behind} B")
    # Nothing accumulates over connections, on either heap.
    assert max(map(abs, left_behind)) <= 64, left_behind
    assert gc_heap["closed"][0] == gc_heap["closed"][-1] <= 256, gc_heap  # (the loop's own locals)
    # The mbedTLS buffers are where the bytes go: ~16 KB in + ~4 KB out + state, outside the Python heap.
    assert 20_000 <= min(connected) and max(connected) <= 32_000 and max(handshake_peak) < 40_000
    assert gc_heap["context"] < 6_000 and max(gc_heap["connection"]) < 2_000
