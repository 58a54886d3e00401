// Frames of the load-balancing kernel tests (datapath-lb.test.ts, datapath-lb-icmp.test.ts) and
// their checksums, computed here from the bytes (RFC 1071; pseudo-headers: RFC 768, RFC 9293,
// RFC 8200 8.1; ICMPv6: RFC 4443 2.3), never taken from the kernel: Ethernet without VLANs,
// IPv4 without options or IPv6 without extension headers.
import { formatAddress } from '@edgeplane/proto';
import { buildFrame, type FrameSpec } from '../src/datapath/packet.js';

/** What a frame's IP and L4 headers say. */
export interface Headers {
  family: 4 | 6;
  proto: number;
  /** Offset of the L4 header. */
  l4: number;
  src: string;
  dst: string;
  sport: number;
  dport: number;
}

/** The headers of `frame` (ports read as TCP/UDP's, whatever the protocol). */
export function headers(frame: Uint8Array): Headers {
  const view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  const family = view.getUint16(12) === 0x0800 ? 4 : 6;
  const l4 = family === 4 ? 14 + ((frame[14] as number) & 0x0f) * 4 : 54;
  const proto = family === 4 ? (frame[23] as number) : (frame[20] as number);
  const address = (at: number): string => formatAddress(family, frame.subarray(at, at + (family === 4 ? 4 : 16)));
  return { family, proto, l4, src: address(family === 4 ? 26 : 22), dst: address(family === 4 ? 30 : 38), sport: view.getUint16(l4), dport: view.getUint16(l4 + 2) };
}

/** The one's-complement sum of `bytes` as 16-bit words (a last odd byte padded), added to `sum`. */
export function sum16(bytes: Uint8Array, sum = 0): number {
  for (let i = 0; i < bytes.length; i += 2) sum += ((bytes[i] as number) << 8) | (bytes[i + 1] ?? 0);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return sum;
}

/** The sum of an IPv4 or IPv6 pseudo-header (RFC 9293 3.1, RFC 8200 8.1). */
function pseudoSum(family: 4 | 6, src: Uint8Array, dst: Uint8Array, proto: number, length: number): number {
  const pseudo = new Uint8Array(family === 4 ? 12 : 40);
  const view = new DataView(pseudo.buffer);
  pseudo.set(src, 0);
  pseudo.set(dst, src.length);
  if (family === 4) {
    pseudo[9] = proto;
    view.setUint16(10, length);
  } else {
    view.setUint32(32, length);
    pseudo[39] = proto;
  }
  return sum16(pseudo);
}

// The one's-complement sum of the L4 pseudo-header and segment (checksum field included).
function l4Sum(frame: Uint8Array): number {
  const h = headers(frame);
  const segment = frame.subarray(h.l4);
  const alen = h.family === 4 ? 4 : 16;
  const at = h.family === 4 ? 26 : 22;
  return sum16(segment, pseudoSum(h.family, frame.subarray(at, at + alen), frame.subarray(at + alen, at + 2 * alen), h.proto, segment.length));
}

/** Offset of the frame's TCP or UDP checksum field. */
export const checksumAt = (frame: Uint8Array): number => {
  const h = headers(frame);
  return h.l4 + (h.proto === 6 ? 16 : 6);
};

/** `spec`'s frame with a valid L4 checksum (buildFrame leaves it 0); `udpZero`: an IPv4 UDP frame without one. */
export function frameOf(spec: FrameSpec, udpZero = false): Uint8Array {
  const frame = buildFrame(spec);
  if (udpZero) return frame;
  const at = checksumAt(frame);
  const sum = ~l4Sum(frame) & 0xffff;
  new DataView(frame.buffer).setUint16(at, sum === 0 && headers(frame).proto === 17 ? 0xffff : sum);
  return frame;
}

/** Problems with the frame's checksums (IPv4 header, L4 over its pseudo-header); [] when valid. */
export function checksumProblems(frame: Uint8Array): string[] {
  const h = headers(frame);
  const problems: string[] = [];
  if (h.family === 4) {
    const header = frame.subarray(14, h.l4);
    if (sum16(header) !== 0xffff) problems.push('IPv4 header checksum');
  }
  const field = new DataView(frame.buffer, frame.byteOffset).getUint16(checksumAt(frame));
  if (h.proto === 17 && h.family === 4 && field === 0) return problems; // no checksum (RFC 768)
  if (l4Sum(frame) !== 0xffff) problems.push(`${h.proto === 6 ? 'TCP' : 'UDP'} checksum`);
  return problems;
}

// ---- ICMP errors (RFC 792, RFC 4443) ----

/** What an ICMP error frame says and quotes. */
export interface IcmpError {
  src: string;
  dst: string;
  /** ICMP or ICMPv6 type and code (by the addresses' family). */
  type: number;
  code: number;
  /** The 32-bit word after the checksum: frag-needed's next-hop MTU (low 16 bits), packet-too-big's MTU. */
  rest?: number;
  /** The quoted packet: an IP header and what follows it (quoteOf). */
  quote: Uint8Array;
}

/** The IP packet of `frame` (no VLANs) cut `l4Bytes` bytes after its IP header (all of it when omitted). */
export function quoteOf(frame: Uint8Array, l4Bytes?: number): Uint8Array {
  const h = headers(frame);
  return frame.slice(14, l4Bytes === undefined ? frame.length : h.l4 + l4Bytes);
}

/** The frame of `error` with a valid ICMP checksum (and IPv4 header checksum). */
export function icmpErrorFrame(error: IcmpError): Uint8Array {
  const frame = buildFrame({ src: error.src, dst: error.dst, protocol: 'icmp', icmpType: error.type, icmpCode: error.code, payloadLength: error.quote.length });
  const l4 = headers(frame).l4;
  const view = new DataView(frame.buffer);
  view.setUint32(l4 + 4, error.rest ?? 0);
  frame.set(error.quote, l4 + 8);
  view.setUint16(l4 + 2, ~icmpSum(frame) & 0xffff);
  return frame;
}

// The one's-complement sum of the ICMP message (checksum field included); ICMPv6's with its pseudo-header.
function icmpSum(frame: Uint8Array): number {
  const h = headers(frame);
  const message = frame.subarray(h.l4);
  if (h.family === 4) return sum16(message);
  return sum16(message, pseudoSum(6, frame.subarray(22, 38), frame.subarray(38, 54), 58, message.length));
}

/** Problems with an ICMP error frame's checksums: ICMP (ICMPv6 with its pseudo-header), the outer and the quoted IPv4 header's; [] when valid. */
export function icmpChecksumProblems(frame: Uint8Array): string[] {
  const h = headers(frame);
  const problems: string[] = [];
  if (h.family === 4 && sum16(frame.subarray(14, h.l4)) !== 0xffff) problems.push('IPv4 header checksum');
  if (icmpSum(frame) !== 0xffff) problems.push(h.family === 4 ? 'ICMP checksum' : 'ICMPv6 checksum');
  const inner = h.l4 + 8;
  if (h.family === 4 && sum16(frame.subarray(inner, inner + ((frame[inner] as number) & 0x0f) * 4)) !== 0xffff) problems.push('quoted IPv4 header checksum');
  return problems;
}

/** The packet an ICMP error frame quotes, as a frame of its own (an Ethernet header before it), for headers() and checksumProblems(). */
export function quotedFrame(frame: Uint8Array): Uint8Array {
  const h = headers(frame);
  const inner = frame.subarray(h.l4 + 8);
  const out = new Uint8Array(14 + inner.length);
  new DataView(out.buffer).setUint16(12, h.family === 4 ? 0x0800 : 0x86dd);
  out.set(inner, 14);
  return out;
}
