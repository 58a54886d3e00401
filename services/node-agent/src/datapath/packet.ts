// Builds Ethernet frames for tests and benchmarks: VLAN tags, IPv4 (options, fragments), IPv6
// (extension headers, fragments), TCP/UDP/ICMP. Checksums are filled where cheap (IPv4
// header); nothing here is meant for a real peer's stack.
import { parseAddress } from '@edgeplane/proto';

/** An IPv6 extension header to insert, in order, before the upper-layer header. */
export type ExtensionHeader =
  | { readonly type: 'hop-by-hop' | 'routing' | 'destination'; readonly length?: number }
  | { readonly type: 'ah'; readonly length?: number }
  | { readonly type: 'fragment'; readonly offset: number; readonly more?: boolean };

/** Description of a frame for buildFrame(). */
export interface FrameSpec {
  /** Source and destination addresses; both of one family. */
  readonly src: string;
  readonly dst: string;
  /** 'tcp', 'udp', 'icmp' (ICMP or ICMPv6 by family), or an IP protocol number. */
  readonly protocol: 'tcp' | 'udp' | 'icmp' | number;
  readonly srcPort?: number;
  readonly dstPort?: number;
  /** VLAN ids, outermost first; the outer tag of two uses 802.1ad. */
  readonly vlans?: readonly number[];
  /** IPv4 only: fragment offset in 8-byte units and the more-fragments flag. */
  readonly fragment?: { readonly offset: number; readonly more?: boolean };
  /** IPv4 only: bytes of options (a multiple of 4, at most 40). */
  readonly ipv4OptionBytes?: number;
  /** IPv6 only: extension headers. */
  readonly extensionHeaders?: readonly ExtensionHeader[];
  /** Payload bytes after the L4 header. Default 16. */
  readonly payloadLength?: number;
  /** TCP only: the flags byte (tcpFlags.syn | tcpFlags.ack...). Default SYN. */
  readonly tcpFlags?: number;
  /** ICMP/ICMPv6 only: type, code and echo identifier. Default an echo request, code 0, id 0. */
  readonly icmpType?: number;
  readonly icmpCode?: number;
  readonly icmpId?: number;
  /**
   * ICMP/ICMPv6 errors: the packet the error quotes. Its IP header and the first 8 bytes after
   * it follow the ICMP header (RFC 792, RFC 4443 2.4), in place of the payload.
   */
  readonly icmpQuote?: FrameSpec;
}

/** TCP flag bits of the flags byte (RFC 9293 3.1). */
export const tcpFlags = { fin: 0x01, syn: 0x02, rst: 0x04, psh: 0x08, ack: 0x10, urg: 0x20 } as const;

const upperProtocol = (spec: FrameSpec, family: 4 | 6): number => {
  if (typeof spec.protocol === 'number') return spec.protocol;
  return { tcp: 6, udp: 17, icmp: family === 4 ? 1 : 58 }[spec.protocol];
};

const extensionNumbers = { 'hop-by-hop': 0, routing: 43, destination: 60, ah: 51, fragment: 44 } as const;

/**
 * Builds the frame `spec` describes.
 * @returns a new Uint8Array. @throws TypeError for unparsable or mixed-family addresses.
 */
export function buildFrame(spec: FrameSpec): Uint8Array {
  const src = parseAddress(spec.src);
  const dst = parseAddress(spec.dst);
  if (src === undefined || dst === undefined || src.length !== dst.length) throw new TypeError(`buildFrame: bad addresses ${spec.src} -> ${spec.dst}`);
  const family = src.length === 4 ? 4 : 6;
  const protocol = upperProtocol(spec, family);
  const payload = spec.payloadLength ?? 16;
  const l4 = l4Header(protocol, spec, payload);
  const l3 = family === 4 ? ipv4Header(spec, src, dst, protocol, l4.length) : ipv6Headers(spec, src, dst, protocol, l4.length);
  const vlans = spec.vlans ?? [];
  const frame = new Uint8Array(14 + 4 * vlans.length + l3.length + l4.length);
  const view = new DataView(frame.buffer);
  frame.set([0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01], 0);
  let off = 12;
  vlans.forEach((vid, i) => {
    view.setUint16(off, vlans.length > 1 && i === 0 ? 0x88a8 : 0x8100);
    view.setUint16(off + 2, vid & 0x0fff);
    off += 4;
  });
  view.setUint16(off, family === 4 ? 0x0800 : 0x86dd);
  off += 2;
  frame.set(l3, off);
  frame.set(l4, off + l3.length);
  return frame;
}

/** A frame of another ethertype (ARP by default) with `length` bytes in all. */
export function buildNonIpFrame(ethertype = 0x0806, length = 60): Uint8Array {
  const frame = new Uint8Array(length);
  frame.set([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 0x01], 0);
  new DataView(frame.buffer).setUint16(12, ethertype);
  return frame;
}

function l4Header(protocol: number, spec: FrameSpec, payload: number): Uint8Array {
  if (protocol === 6 || protocol === 17) {
    const header = new Uint8Array((protocol === 6 ? 20 : 8) + payload);
    const view = new DataView(header.buffer);
    view.setUint16(0, spec.srcPort ?? 40000);
    view.setUint16(2, spec.dstPort ?? 80);
    if (protocol === 6) {
      header[12] = 5 << 4;
      header[13] = spec.tcpFlags ?? tcpFlags.syn;
    } else {
      view.setUint16(4, header.length);
    }
    return header;
  }
  const quote = spec.icmpQuote === undefined ? undefined : quotedPacket(spec.icmpQuote);
  const header = new Uint8Array(8 + (quote?.length ?? payload));
  header[0] = spec.icmpType ?? (protocol === 58 ? 128 : 8); // echo request
  header[1] = spec.icmpCode ?? 0;
  new DataView(header.buffer).setUint16(4, spec.icmpId ?? 0);
  if (quote !== undefined) header.set(quote, 8);
  return header;
}

// The IP header (with any options or extension headers) and the first 8 bytes after it.
function quotedPacket(spec: FrameSpec): Uint8Array {
  const frame = buildFrame({ ...spec, vlans: [] });
  const ip = frame.subarray(14);
  const family = ip[0] === undefined ? 4 : ip[0] >> 4;
  let l3 = family === 4 ? ((ip[0] as number) & 0x0f) * 4 : 40;
  if (family === 6) for (const ext of spec.extensionHeaders ?? []) l3 += ext.type === 'fragment' ? 8 : ext.type === 'ah' ? ((ext.length ?? 0) + 2) * 4 : ((ext.length ?? 0) + 1) * 8;
  return ip.slice(0, Math.min(ip.length, l3 + 8));
}

function ipv4Header(spec: FrameSpec, src: Uint8Array, dst: Uint8Array, protocol: number, l4Length: number): Uint8Array {
  const options = spec.ipv4OptionBytes ?? 0;
  const header = new Uint8Array(20 + options);
  const view = new DataView(header.buffer);
  header[0] = 0x40 | ((20 + options) / 4);
  view.setUint16(2, header.length + l4Length);
  view.setUint16(4, 0x1234);
  const fragment = spec.fragment;
  if (fragment !== undefined) view.setUint16(6, (fragment.more === true ? 0x2000 : 0) | (fragment.offset & 0x1fff));
  header[8] = 64;
  header[9] = protocol;
  header.set(src, 12);
  header.set(dst, 16);
  for (let i = 20; i < header.length; i++) header[i] = 1; // NOP options
  let sum = 0;
  for (let i = 0; i < header.length; i += 2) sum += view.getUint16(i);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  view.setUint16(10, ~sum & 0xffff);
  return header;
}

function ipv6Headers(spec: FrameSpec, src: Uint8Array, dst: Uint8Array, protocol: number, l4Length: number): Uint8Array {
  const extensions = spec.extensionHeaders ?? [];
  const bodies = extensions.map((ext, i): Uint8Array => {
    const next = i + 1 < extensions.length ? extensionNumbers[(extensions[i + 1] as ExtensionHeader).type] : protocol;
    if (ext.type === 'fragment') {
      const body = new Uint8Array(8);
      body[0] = next;
      new DataView(body.buffer).setUint16(2, ((ext.offset & 0x1fff) << 3) | (ext.more === true ? 1 : 0));
      return body;
    }
    const length = ext.length ?? 0;
    const body = new Uint8Array(ext.type === 'ah' ? (length + 2) * 4 : (length + 1) * 8);
    body[0] = next;
    body[1] = length;
    return body;
  });
  const extBytes = bodies.reduce((n, body) => n + body.length, 0);
  const header = new Uint8Array(40 + extBytes);
  const view = new DataView(header.buffer);
  header[0] = 0x60;
  view.setUint16(4, extBytes + l4Length);
  header[6] = extensions.length > 0 ? extensionNumbers[(extensions[0] as ExtensionHeader).type] : protocol;
  header[7] = 64;
  header.set(src, 8);
  header.set(dst, 24);
  let off = 40;
  for (const body of bodies) {
    header.set(body, off);
    off += body.length;
  }
  return header;
}
