#!/usr/bin/env python3
# Traffic for datapath-conntrack.test.ts, run inside a network namespace with `ip netns exec`.
# Each command prints one line (JSON) and exits; servers print "ready" once listening and run
# until killed. Standard library only.
import json
import os
import select
import socket
import struct
import sys
import time


def family_of(addr):
    return socket.AF_INET6 if ':' in addr else socket.AF_INET


def out(value):
    print(json.dumps(value), flush=True)


def tcp_server(addr, port):
    s = socket.socket(family_of(addr), socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, int(port)))
    s.listen(64)
    print('ready', flush=True)
    while True:
        c, _ = s.accept()
        c.settimeout(5)
        try:
            while True:
                data = c.recv(65536)
                if not data:
                    break
                c.sendall(data)
        except OSError:
            pass
        c.close()


def udp_server(addr, port):
    s = socket.socket(family_of(addr), socket.SOCK_DGRAM)
    s.bind((addr, int(port)))
    print('ready', flush=True)
    while True:
        data, peer = s.recvfrom(65536)
        s.sendto(data, peer)


def tcp_client(addr, port, timeout, sport='0'):
    """Connects, sends, reads the echo, closes gracefully (FIN both ways)."""
    s = socket.socket(family_of(addr), socket.SOCK_STREAM)
    s.settimeout(float(timeout))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if int(sport):
        s.bind(('::' if ':' in addr else '0.0.0.0', int(sport)))
    try:
        s.connect((addr, int(port)))
        local = s.getsockname()[1]
        s.sendall(b'hello conntrack')
        data = s.recv(100)
        s.shutdown(socket.SHUT_WR)
        rest = s.recv(100)
        s.close()
        out({'ok': data == b'hello conntrack' and rest == b'', 'sport': local})
    except OSError as e:
        out({'ok': False, 'error': str(e)})


def tcp_hold(addr, port, timeout, hold):
    """Connects and keeps echoing one message per 0.2 s for `hold` seconds; reports how many came back."""
    s = socket.socket(family_of(addr), socket.SOCK_STREAM)
    s.settimeout(float(timeout))
    try:
        s.connect((addr, int(port)))
        print(json.dumps({'connected': True, 'sport': s.getsockname()[1]}), flush=True)
        sent = echoed = 0
        end = time.time() + float(hold)
        while time.time() < end:
            s.sendall(b'ping')
            sent += 1
            if s.recv(4) == b'ping':
                echoed += 1
            time.sleep(0.2)
        s.close()
        out({'ok': sent == echoed and sent > 0, 'sent': sent, 'echoed': echoed})
    except OSError as e:
        out({'ok': False, 'error': str(e)})


def udp_client(addr, port, timeout, sport='0', count='1'):
    s = socket.socket(family_of(addr), socket.SOCK_DGRAM)
    s.settimeout(float(timeout))
    s.bind(('::' if ':' in addr else '0.0.0.0', int(sport)))
    got = 0
    for i in range(int(count)):
        s.sendto(b'udp %d' % i, (addr, int(port)))
        try:
            data, _ = s.recvfrom(100)
            got += data == b'udp %d' % i
        except OSError:
            pass
    out({'ok': got == int(count), 'got': got, 'sport': s.getsockname()[1]})


def udp_flows(addr, port, timeout, first, count):
    """One UDP exchange from each of `count` source ports starting at `first`: `count` flows."""
    ok = 0
    for sport in range(int(first), int(first) + int(count)):
        s = socket.socket(family_of(addr), socket.SOCK_DGRAM)
        s.settimeout(float(timeout))
        s.bind(('::' if ':' in addr else '0.0.0.0', sport))
        s.sendto(b'flow', (addr, int(port)))
        try:
            ok += s.recvfrom(100)[0] == b'flow'
        except OSError:
            pass
        s.close()
    out({'ok': ok == int(count), 'got': ok})


def checksum(data):
    if len(data) % 2:
        data += b'\0'
    total = sum(struct.unpack('!%dH' % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xffff) + (total >> 16)
    return ~total & 0xffff


def inner_v4(src, dst, proto, sport, dport):
    header = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + 8 + 32, 1, 0, 64, proto, 0, socket.inet_aton(src), socket.inet_aton(dst))
    header = header[:10] + struct.pack('!H', checksum(header)) + header[12:]
    return header + struct.pack('!HHHH', int(sport), int(dport), 40, 0)


def inner_v6(src, dst, proto, sport, dport):
    header = struct.pack('!IHBB16s16s', 6 << 28, 8 + 32, proto, 64, socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst))
    return header + struct.pack('!HHHH', int(sport), int(dport), 40, 0)


def icmp_error(to, inner_src, inner_dst, proto, sport, dport):
    """From here to `to`: ICMP "fragmentation needed" (3/4, MTU 1280) or ICMPv6 "packet too big"
    (2/0, MTU 1280) about the packet inner_src:sport -> inner_dst:dport."""
    proto = int(proto)
    if ':' in to:
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        # The kernel fills in the ICMPv6 checksum on raw ICMPv6 sockets (RFC 3542 3.1).
        body = struct.pack('!BBHI', 2, 0, 0, 1280) + inner_v6(inner_src, inner_dst, proto, sport, dport)
        s.sendto(body, (to, 0))
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        body = struct.pack('!BBHHH', 3, 4, 0, 0, 1280) + inner_v4(inner_src, inner_dst, proto, sport, dport)
        body = body[:2] + struct.pack('!H', checksum(body)) + body[4:]
        s.sendto(body, (to, 0))
    out({'sent': True})


def icmp_listen(family, timeout):
    """Prints "ready", then the first ICMP error this namespace receives within `timeout` seconds
    as [type, code, source port of the embedded packet], or null."""
    if family == '6':
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        errors = (1, 2, 3, 4)
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        errors = (3, 11, 12)
    print('ready', flush=True)
    end = time.time() + float(timeout)
    while time.time() < end:
        ready, _, _ = select.select([s], [], [], max(0.0, end - time.time()))
        if not ready:
            break
        data = s.recv(2048)
        # IPv4 raw sockets deliver the IP header too; IPv6 ones only the ICMPv6 message.
        icmp = data[(data[0] & 0x0f) * 4:] if family != '6' else data
        if icmp[0] in errors:
            inner = icmp[8:]
            l4 = inner[(inner[0] & 0x0f) * 4:] if family != '6' else inner[40:]
            out({'error': [icmp[0], icmp[1], struct.unpack('!H', l4[:2])[0]]})
            return
    out({'error': None})


def echo_stream(to, count, interval, wait, source=''):
    """Sends `count` ICMP echo requests to `to` (from address `source` if given), `interval` seconds apart, and takes their replies
    until every one is in or `wait` seconds after the last request. Unlike ping, which waits only
    two round trips after its last request once it has had a reply, a reply that comes late still
    counts. Prints the requests sent, the replies received (one per request) and the first
    requests without one."""
    count, interval, wait = int(count), float(interval), float(wait)
    v6 = ':' in to
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) if v6 else socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    if source:
        s.bind((source, 0))
    ident = os.getpid() & 0xffff
    request, reply = (128, 129) if v6 else (8, 0)
    answered = set()
    sent = 0
    start = time.monotonic()
    end = None
    while len(answered) < count:
        now = time.monotonic()
        if sent < count and now >= start + sent * interval:
            body = struct.pack('!BBHHH', request, 0, 0, ident, sent) + b'edgeplane-echo'
            # The kernel fills in the ICMPv6 checksum on raw ICMPv6 sockets (RFC 3542 3.1).
            if not v6:
                body = body[:2] + struct.pack('!H', checksum(body)) + body[4:]
            s.sendto(body, (to, 0))
            sent += 1
            if sent == count:
                end = time.monotonic() + wait
            continue
        deadline = end if sent == count else start + sent * interval
        if now >= deadline:
            break
        ready, _, _ = select.select([s], [], [], deadline - now)
        if not ready:
            continue
        data = s.recv(2048)
        # IPv4 raw sockets deliver the IP header too; IPv6 ones only the ICMPv6 message.
        icmp = data if v6 else data[(data[0] & 0x0f) * 4:]
        if len(icmp) >= 8 and icmp[0] == reply:
            got_ident, seq = struct.unpack('!HH', icmp[4:8])
            if got_ident == ident and seq < sent:
                answered.add(seq)
    out({'sent': sent, 'received': len(answered), 'missing': [seq for seq in range(sent) if seq not in answered][:10]})


commands = {
    'tcp-server': tcp_server,
    'udp-server': udp_server,
    'tcp-client': tcp_client,
    'tcp-hold': tcp_hold,
    'udp-client': udp_client,
    'udp-flows': udp_flows,
    'icmp-error': icmp_error,
    'icmp-listen': icmp_listen,
    'echo-stream': echo_stream,
}

if __name__ == '__main__':
    commands[sys.argv[1]](*sys.argv[2:])
