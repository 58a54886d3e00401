#!/usr/bin/env python3
# Traffic for the load-balancing rig (test/support/lb-rig.ts), run inside a network namespace
# with `ip netns exec`. Standard library only. Each command prints JSON lines; servers and holders
# print "ready" once they are set up and run until SIGTERM.
#
#   serve NAME PORT...             a backend: on each port, TCP (IPv4 and IPv6) sends "NAME\n" on
#                                  accept and then echoes; UDP answers every datagram with NAME.
#   serve-on HOST NAME PORT...     as serve, listening on HOST only (a DSR backend's VIP).
#   connect HOST PORT COUNT        COUNT new TCP connections (32 at a time, 2 s each): which
#                                  backend each reached, and how many failed (and how).
#   udp HOST PORT COUNT            COUNT datagrams, each from a new socket (a new flow).
#   flows HOST PORT COUNT FIRST_SPORT
#                                  COUNT TCP connections, from source ports FIRST_SPORT,
#                                  FIRST_SPORT + 1, ... (0: ports the kernel picks), each closed
#                                  with a reset (no TIME_WAIT, so a port can be used again at
#                                  once): per connection its source port and the backend it
#                                  reached, or the failure.
#   hold HOST PORT COUNT INTERVAL_MS STALL_MS
#                                  COUNT long-lived connections; every INTERVAL_MS a line on each,
#                                  echoed back within STALL_MS or the connection is broken (reset,
#                                  eof, stall, error). On SIGTERM: one more round, then the
#                                  report.
#   badsum DST PORT                one UDP datagram whose checksum is wrong (raw socket).
#   bulk HOST PORT BYTES TIMEOUT_MS
#                                  one TCP connection that sends BYTES in full-sized segments and
#                                  reads them echoed, giving up after TIMEOUT_MS: the backend,
#                                  the bytes sent and echoed, the socket's path MTU, or a failure.
#                                  At most BULK_AHEAD bytes are sent ahead of the echo: serve's
#                                  echo is a non-blocking sendall that gives up (and resets the
#                                  connection) when its send buffer is full.
import json
import resource
import selectors
import signal
import socket
import struct
import sys
import time
from concurrent.futures import ThreadPoolExecutor

stop = False


def on_term(_sig, _frame):
    global stop
    stop = True


signal.signal(signal.SIGTERM, on_term)
signal.signal(signal.SIGINT, on_term)
# Holders keep up to a few thousand sockets open.
_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (_hard, _hard))


def out(value):
    print(json.dumps(value), flush=True)


def family_of(host):
    return socket.AF_INET6 if ':' in host else socket.AF_INET


def serve(name, ports, host='::'):
    sel = selectors.DefaultSelector()
    hello = f'{name}\n'.encode()
    family = family_of(host)
    for port in ports:
        t = socket.socket(family, socket.SOCK_STREAM)
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if host == '::':
            t.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        t.bind((host, port))
        t.listen(4096)
        t.setblocking(False)
        sel.register(t, selectors.EVENT_READ, 'listen')
        u = socket.socket(family, socket.SOCK_DGRAM)
        if host == '::':
            u.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        u.bind((host, port))
        u.setblocking(False)
        sel.register(u, selectors.EVENT_READ, 'udp')
    print('ready', flush=True)
    while not stop:
        for key, _ in sel.select(0.2):
            s = key.fileobj
            try:
                if key.data == 'listen':
                    while True:
                        try:
                            c, _ = s.accept()
                        except BlockingIOError:
                            break
                        c.setblocking(False)
                        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        c.send(hello)
                        sel.register(c, selectors.EVENT_READ, 'conn')
                elif key.data == 'udp':
                    while True:
                        try:
                            _, peer = s.recvfrom(2048)
                        except BlockingIOError:
                            break
                        s.sendto(name.encode(), peer)
                else:
                    data = s.recv(65536)
                    if data:
                        s.sendall(data)
                    else:
                        sel.unregister(s)
                        s.close()
            except OSError:
                if key.data == 'conn':
                    sel.unregister(s)
                    s.close()


def read_line(s, deadline):
    buf = b''
    while not buf.endswith(b'\n'):
        s.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = s.recv(256)
        if not chunk:
            raise EOFError('eof')
        buf += chunk
    return buf.decode().strip()


def open_one(host, port, timeout=2.0):
    """A connection that said which backend it reached: (socket, name)."""
    s = socket.socket(family_of(host), socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect((host, port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s, read_line(s, time.monotonic() + timeout)
    except BaseException:
        s.close()
        raise


def reason_of(error):
    if isinstance(error, ConnectionResetError):
        return 'reset'
    if isinstance(error, ConnectionRefusedError):
        return 'refused'
    if isinstance(error, EOFError):
        return 'eof'
    if isinstance(error, (socket.timeout, TimeoutError)):
        return 'timeout'
    return type(error).__name__


def connect(host, port, count):
    reached, failures = {}, {}

    def one(_):
        try:
            s, name = open_one(host, port)
            s.close()
            return name, None
        except Exception as e:  # noqa: BLE001 - every failure is counted by kind
            return None, reason_of(e)

    with ThreadPoolExecutor(32) as pool:
        for name, failure in pool.map(one, range(count)):
            if name is not None:
                reached[name] = reached.get(name, 0) + 1
            else:
                failures[failure] = failures.get(failure, 0) + 1
    out({'reached': reached, 'failed': sum(failures.values()), 'failures': failures})


def flows(host, port, count, first_sport):
    def one(i):
        s = socket.socket(family_of(host), socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
            s.bind(('', first_sport + i if first_sport else 0))
            sport = s.getsockname()[1]
            s.settimeout(2.0)
            try:
                s.connect((host, port))
                return {'sport': sport, 'backend': read_line(s, time.monotonic() + 2.0)}
            except Exception as e:  # noqa: BLE001 - every failure is reported by kind
                return {'sport': sport, 'failure': reason_of(e)}
        finally:
            s.close()

    with ThreadPoolExecutor(32) as pool:
        out({'flows': list(pool.map(one, range(count)))})


def udp(host, port, count):
    reached, failed = {}, 0
    for _ in range(count):
        s = socket.socket(family_of(host), socket.SOCK_DGRAM)
        s.settimeout(1.0)
        try:
            s.sendto(b'who', (host, port))
            name = s.recv(256).decode()
            reached[name] = reached.get(name, 0) + 1
        except OSError:
            failed += 1
        finally:
            s.close()
    out({'reached': reached, 'failed': failed, 'failures': {'timeout': failed} if failed else {}})


def hold(host, port, count, interval_ms, stall_ms):
    conns = []
    with ThreadPoolExecutor(32) as pool:
        for result in pool.map(lambda _: open_one(host, port), range(count)):
            conns.append(result)
    for s, _ in conns:
        s.setblocking(False)
    names = [name for _, name in conns]
    backends = {}
    for name in names:
        backends[name] = backends.get(name, 0) + 1
    print('ready ' + json.dumps({'backends': backends}), flush=True)
    sel = selectors.DefaultSelector()
    for i, (s, _) in enumerate(conns):
        sel.register(s, selectors.EVENT_READ, i)
    broken = {}
    trips = 0
    rounds = 0
    msg = b'ping\n'
    while True:
        # One whole round after SIGTERM: whatever broke before the stop is in the report.
        final = stop
        started = time.monotonic()
        waiting = {}
        for i, (s, _) in enumerate(conns):
            if i in broken:
                continue
            try:
                s.send(msg)
                waiting[i] = b''
            except OSError as e:
                broken[i] = reason_of(e)
        deadline = started + stall_ms / 1000
        while waiting and time.monotonic() < deadline:
            for key, _ in sel.select(max(0.0, deadline - time.monotonic())):
                i = key.data
                if i not in waiting:
                    continue
                try:
                    data = key.fileobj.recv(256)
                except BlockingIOError:
                    continue
                except OSError as e:
                    broken[i] = reason_of(e)
                    del waiting[i]
                    continue
                if not data:
                    broken[i] = 'eof'
                    del waiting[i]
                    continue
                waiting[i] += data
                if len(waiting[i]) >= len(msg):
                    trips += 1
                    del waiting[i]
        for i in waiting:
            broken[i] = 'stall'
        rounds += 1
        if final:
            break
        rest = interval_ms / 1000 - (time.monotonic() - started)
        if rest > 0 and not stop:
            time.sleep(rest)
    out({
        'connections': len(conns),
        'backends': backends,
        'rounds': rounds,
        'roundTrips': trips,
        'broken': [{'index': i, 'backend': names[i], 'reason': r} for i, r in sorted(broken.items())],
    })


def checksum(data):
    if len(data) % 2:
        data += b'\0'
    total = sum(struct.unpack(f'!{len(data) // 2}H', data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def badsum(dst, port):
    # The kernel builds the IP header; the UDP header is ours, its checksum deliberately wrong.
    payload = b'bad checksum'
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
    s.connect((dst, 0))
    src = s.getsockname()[0]
    header = struct.pack('!HHHH', 40000, port, 8 + len(payload), 0)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack('!BBH', 0, 17, 8 + len(payload))
    good = checksum(pseudo + header + payload) or 0xFFFF
    wrong = good ^ 0x00FF
    s.send(struct.pack('!HHHH', 40000, port, 8 + len(payload), wrong) + payload)
    out({'sent': 1, 'checksum': wrong, 'correct': good})


IP_MTU = 14    # linux/in.h
IPV6_MTU = 24  # linux/in6.h
BULK_AHEAD = 16384  # 11 full-sized segments, well within a new connection's send buffer


def bulk(host, port, size, timeout_ms):
    deadline = time.monotonic() + timeout_ms / 1000
    payload = (bytes(range(256)) * (size // 256 + 1))[:size]
    report = {'sent': 0, 'echoed': 0}
    try:
        s, report['backend'] = open_one(host, port)
    except BaseException as error:
        report['failure'] = reason_of(error)
        out(report)
        return
    sent = echoed = 0
    try:
        # Full-sized segments: no Nagle opt-out, large writes.
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
        s.setblocking(False)
        sel = selectors.DefaultSelector()
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
        writing = True
        while echoed < size and time.monotonic() < deadline:
            for _, events in sel.select(0.2):
                if events & selectors.EVENT_WRITE and sent < size:
                    try:
                        sent += s.send(payload[sent:min(size, echoed + BULK_AHEAD)])
                    except BlockingIOError:
                        pass
                if events & selectors.EVENT_READ:
                    try:
                        data = s.recv(65536)
                    except BlockingIOError:
                        continue
                    if not data:
                        raise EOFError('eof')
                    if data != payload[echoed:echoed + len(data)]:
                        raise ValueError('echo differs')
                    echoed += len(data)
                # Write only while there is room ahead of the echo.
                want = sent < min(size, echoed + BULK_AHEAD)
                if want != writing:
                    writing = want
                    sel.modify(s, selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0))
        if echoed < size:
            report['failure'] = 'stall'
    except BaseException as error:
        report['failure'] = reason_of(error)
    report['sent'], report['echoed'] = sent, echoed
    try:
        v6 = family_of(host) == socket.AF_INET6
        report['pathMtu'] = s.getsockopt(socket.IPPROTO_IPV6 if v6 else socket.IPPROTO_IP, IPV6_MTU if v6 else IP_MTU)
    except OSError:
        pass
    s.close()
    out(report)


def main(argv):
    command = argv[1] if len(argv) > 1 else ''
    if command == 'serve' and len(argv) >= 4:
        serve(argv[2], [int(p) for p in argv[3:]])
    elif command == 'serve-on' and len(argv) >= 5:
        serve(argv[3], [int(p) for p in argv[4:]], argv[2])
    elif command == 'connect' and len(argv) == 5:
        connect(argv[2], int(argv[3]), int(argv[4]))
    elif command == 'flows' and len(argv) == 6:
        flows(argv[2], int(argv[3]), int(argv[4]), int(argv[5]))
    elif command == 'udp' and len(argv) == 5:
        udp(argv[2], int(argv[3]), int(argv[4]))
    elif command == 'hold' and len(argv) == 7:
        hold(argv[2], int(argv[3]), int(argv[4]), int(argv[5]), int(argv[6]))
    elif command == 'bulk' and len(argv) == 6:
        bulk(argv[2], int(argv[3]), int(argv[4]), int(argv[5]))
    elif command == 'badsum' and len(argv) == 4:
        badsum(argv[2], int(argv[3]))
    else:
        sys.stderr.write('usage: see the header of lb-traffic.py\n')
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
