"""Traffic of datapath-upgrade.test.ts, run in the test's namespaces (Cilium's conn-disrupt idea).

server (in the workload namespace): TCP echo on ECHO_PORT; counts TCP connections accepted and
  UDP datagrams received on the ports the policies deny (each a leak), and sends UDP from the
  workload to the client's LEAK_BACK port, which the workload's TC ingress denies.
client (in the client namespace): a connection loop (a new TCP connection to the echo port per
  iteration, 16 random bytes echoed) and one long-lived connection exchanging a message per
  iteration; an attack loop (TCP connects and UDP datagrams to the denied ports); counts UDP
  datagrams that reach its LEAK_BACK port. A failure is a connection or exchange that did not
  complete within TIMEOUT seconds, or came back wrong.

Both run until stdin closes and then print one JSON line of counts. The client also prints
{"ok": n} after every 10th successful connection, and on stdin takes `mark NAME` lines: it
records the moment, so the report gives the longest interval between successful connections
between two marks (a figure for the log, never asserted).
"""
import json
import os
import select
import socket
import sys
import threading
import time

ECHO_PORT = 8080
TIMEOUT = 2.0
LEAK_BACK = 9094


def stdin_lines(on_line):
    """Calls on_line for each stdin line; returns when stdin closes."""
    for line in sys.stdin:
        on_line(line.strip())


def count_datagrams(port, stop, on_datagram):
    """Receives UDP datagrams on `port` until `stop` is set, calling on_datagram() for each."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    s.settimeout(0.2)
    while not stop.is_set():
        try:
            s.recvfrom(2048)
        except socket.timeout:
            continue
        on_datagram()


def server(denied_tcp, denied_udp, client_addr):
    counts = {"accepted": {str(p): 0 for p in denied_tcp}, "received": {str(p): 0 for p in denied_udp}, "echoed": 0, "sentBack": 0}
    lock = threading.Lock()
    stop = threading.Event()

    def echo(conn):
        with conn:
            conn.settimeout(30)
            try:
                while True:
                    data = conn.recv(64)
                    if not data:
                        return
                    conn.sendall(data)
                    with lock:
                        counts["echoed"] += 1
            except OSError:
                return

    def listen_tcp(port, handler):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.listen(128)
        s.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = s.accept()
            except socket.timeout:
                continue
            handler(conn)

    def count_accept(port):
        def handler(conn):
            with lock:
                counts["accepted"][str(port)] += 1
            conn.close()
        return handler

    def listen_udp(port):
        def received():
            with lock:
                counts["received"][str(port)] += 1
        count_datagrams(port, stop, received)

    def send_back():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        while not stop.is_set():
            s.sendto(b"w" * 32, (client_addr, LEAK_BACK))
            with lock:
                counts["sentBack"] += 1
            time.sleep(0.002)

    threads = [threading.Thread(target=listen_tcp, args=(ECHO_PORT, lambda c: threading.Thread(target=echo, args=(c,), daemon=True).start()), daemon=True)]
    threads += [threading.Thread(target=listen_tcp, args=(p, count_accept(p)), daemon=True) for p in denied_tcp]
    threads += [threading.Thread(target=listen_udp, args=(p,), daemon=True) for p in denied_udp]
    threads.append(threading.Thread(target=send_back, daemon=True))
    for t in threads:
        t.start()
    print(json.dumps({"ready": True}), flush=True)
    stdin_lines(lambda line: None)
    stop.set()
    with lock:
        print(json.dumps(counts), flush=True)


def client(server_addr, denied_tcp, denied_udp):
    counts = {"ok": 0, "failures": [], "attempts": {str(p): 0 for p in denied_tcp + denied_udp}, "leaks": {str(p): 0 for p in denied_tcp}, "leakBack": 0, "longLived": 0}
    marks = {}
    successes = []
    stop = threading.Event()
    lock = threading.Lock()

    def on_line(line):
        if line.startswith("mark "):
            with lock:
                marks[line[5:]] = time.monotonic()

    def receive_back():
        def received():
            with lock:
                counts["leakBack"] += 1
        count_datagrams(LEAK_BACK, stop, received)

    def exchange(sock):
        payload = os.urandom(16)
        sock.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = sock.recv(len(payload) - len(got))
            if not chunk:
                raise OSError("connection closed")
            got += chunk
        if got != payload:
            raise OSError("echo differs")

    def connection_loop():
        long_lived = socket.create_connection((server_addr, ECHO_PORT), timeout=TIMEOUT)
        while not stop.is_set():
            stage = "connect"
            try:
                with socket.create_connection((server_addr, ECHO_PORT), timeout=TIMEOUT) as s:
                    stage = f"exchange sport={s.getsockname()[1]}"
                    exchange(s)
                stage = f"long-lived sport={long_lived.getsockname()[1]}"
                exchange(long_lived)
                with lock:
                    counts["ok"] += 1
                    counts["longLived"] += 1
                    successes.append(time.monotonic())
                    if counts["ok"] % 10 == 0:
                        print(json.dumps({"ok": counts["ok"]}), flush=True)
            except OSError as e:
                with lock:
                    counts["failures"].append(f"{time.monotonic():.3f} {stage}: {e!r}")
                # The long-lived connection may be the one that broke: open another.
                try:
                    long_lived.close()
                    long_lived = socket.create_connection((server_addr, ECHO_PORT), timeout=TIMEOUT)
                except OSError as e2:
                    with lock:
                        counts["failures"].append(f"{time.monotonic():.3f} reconnect {e2!r}")
        long_lived.close()

    def attack_loop():
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        while not stop.is_set():
            for port in denied_udp:
                udp.sendto(b"a" * 32, (server_addr, port))
                with lock:
                    counts["attempts"][str(port)] += 1
            for port in denied_tcp:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                s.connect_ex((server_addr, port))
                # A SYN is sent now; a leak would complete the handshake.
                _, writable, _ = select.select([], [s], [], 0.05)
                with lock:
                    counts["attempts"][str(port)] += 1
                    if writable and s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                        counts["leaks"][str(port)] += 1
                s.close()

    threads = [threading.Thread(target=f, daemon=True) for f in (receive_back, connection_loop, attack_loop)]
    for t in threads:
        t.start()
    stdin_lines(on_line)
    stop.set()
    for t in threads:
        t.join(timeout=TIMEOUT + 1)

    def longest_gap(start, end):
        inside = [t for t in successes if start <= t <= end]
        edges = [start] + inside + [end]
        return max((b - a for a, b in zip(edges, edges[1:])), default=0)

    with lock:
        report = dict(counts)
        names = sorted(marks, key=marks.get)
        report["gapsMs"] = {f"{a}..{b}": round(longest_gap(marks[a], marks[b]) * 1000, 1) for a, b in zip(names, names[1:])}
        report["okBetween"] = {f"{a}..{b}": sum(1 for t in successes if marks[a] <= t <= marks[b]) for a, b in zip(names, names[1:])}
        print(json.dumps(report), flush=True)


if __name__ == "__main__":
    mode = sys.argv[1]
    tcp = [int(p) for p in sys.argv[3].split(",")]
    udp = [int(p) for p in sys.argv[4].split(",")]
    if mode == "server":
        server(tcp, udp, sys.argv[2])
    else:
        client(sys.argv[2], tcp, udp)
