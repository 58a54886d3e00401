import { isIPv4, isIPv6 } from 'node:net';
import { quote } from './limits.js';

/**
 * Characters of the longest address text the parsers look at: a full IPv6 address with an
 * embedded dotted quad is 45. Longer text is refused before any parsing, so every parser here
 * costs O(1) whatever the input's length.
 */
export const MAX_ADDRESS_LENGTH = 45;

/** A parsed CIDR: family, network address bytes (4 or 16) and prefix length. */
export interface Cidr {
  family: 4 | 6;
  /** The network address, host bits zero. 4 bytes for IPv4, 16 for IPv6. */
  address: Uint8Array;
  prefixLength: number;
}

/** Why a CIDR string was refused, with the canonical spelling when one exists. */
export interface CidrProblem {
  reason: 'MALFORMED_CIDR' | 'NON_CANONICAL_CIDR';
  description: string;
}

/** Returns the 16 bytes of an IPv6 address in any valid text form, or undefined. */
export function parseIPv6(text: string): Uint8Array | undefined {
  if (text.length > MAX_ADDRESS_LENGTH || !isIPv6(text)) return undefined;
  let head = text;
  const out = new Uint8Array(16);
  // An embedded dotted quad fills the last 32 bits.
  const lastColon = head.lastIndexOf(':');
  const tail = head.slice(lastColon + 1);
  let tailWords: number[] = [];
  if (tail.includes('.')) {
    const v4 = parseIPv4(tail);
    if (!v4) return undefined;
    tailWords = [(v4[0]! << 8) | v4[1]!, (v4[2]! << 8) | v4[3]!];
    head = head.slice(0, lastColon + 1) + '0';
  }
  const [left, right] = head.includes('::') ? head.split('::') : [head, undefined];
  const words = (s: string | undefined): number[] => (s ? s.split(':').map((w) => parseInt(w, 16)) : []);
  let l = words(left);
  let r = right === undefined ? [] : words(right);
  if (tailWords.length) {
    if (right === undefined) l = [...l.slice(0, -1), ...tailWords];
    else r = [...r.slice(0, -1), ...tailWords];
  }
  const all = right === undefined ? l : [...l, ...new Array<number>(8 - l.length - r.length).fill(0), ...r];
  if (all.length !== 8) return undefined;
  all.forEach((w, i) => {
    out[i * 2] = w >> 8;
    out[i * 2 + 1] = w & 0xff;
  });
  return out;
}

/** Returns the 4 bytes of a dotted-quad IPv4 address, or undefined. */
export function parseIPv4(text: string): Uint8Array | undefined {
  if (text.length > MAX_ADDRESS_LENGTH || !isIPv4(text)) return undefined;
  return new Uint8Array(text.split('.').map((o) => Number(o)));
}

/** Formats IPv6 bytes in the RFC 5952 canonical text form (as WHATWG URL serializes it). */
export function formatIPv6(bytes: Uint8Array): string {
  const words: string[] = [];
  for (let i = 0; i < 16; i += 2) words.push(((bytes[i]! << 8) | bytes[i + 1]!).toString(16));
  return new URL(`http://[${words.join(':')}]/`).hostname.slice(1, -1);
}

/** Formats an address of either family. */
export function formatAddress(family: 4 | 6, bytes: Uint8Array): string {
  return family === 4 ? [...bytes].join('.') : formatIPv6(bytes);
}

function maskHostBits(bytes: Uint8Array, prefixLength: number): Uint8Array {
  const out = new Uint8Array(bytes);
  for (let bit = prefixLength; bit < out.length * 8; bit++) out[bit >> 3]! &= ~(0x80 >> (bit & 7));
  return out;
}

/** Returns the canonical text of a CIDR. */
export function formatCidr(cidr: Cidr): string {
  return `${formatAddress(cidr.family, cidr.address)}/${cidr.prefixLength}`;
}

/**
 * Parses a CIDR and insists on its canonical spelling: a prefix length, host bits zero, no
 * leading zeros, and for IPv6 the RFC 5952 form. Returns the CIDR, or the problem (with the
 * canonical spelling in the description when the input names a valid network). Text longer
 * than an address and a prefix length can be is refused unread; descriptions quote at most
 * a short prefix of the input.
 */
export function parseCanonicalCidr(text: string): Cidr | CidrProblem {
  if (text.length > MAX_ADDRESS_LENGTH + 4) return { reason: 'MALFORMED_CIDR', description: `${quote(text)} is not an IPv4 or IPv6 CIDR` };
  const slash = text.indexOf('/');
  const addr = slash < 0 ? text : text.slice(0, slash);
  const lenText = slash < 0 ? undefined : text.slice(slash + 1);
  const v4 = parseIPv4(addr);
  const v6 = v4 ? undefined : parseIPv6(addr);
  if (!v4 && !v6) return { reason: 'MALFORMED_CIDR', description: `${quote(text)} is not an IPv4 or IPv6 CIDR` };
  const family = v4 ? 4 : 6;
  const bytes = (v4 ?? v6)!;
  const max = family === 4 ? 32 : 128;
  if (lenText === undefined) {
    return { reason: 'MALFORMED_CIDR', description: `${quote(text)} has no prefix length (did you mean ${formatAddress(family, bytes)}/${max}?)` };
  }
  if (!/^(0|[1-9][0-9]{0,2})$/.test(lenText) || Number(lenText) > max) {
    return { reason: 'MALFORMED_CIDR', description: `${quote(text)}: prefix length must be 0 to ${max}` };
  }
  const prefixLength = Number(lenText);
  const cidr: Cidr = { family, address: maskHostBits(bytes, prefixLength), prefixLength };
  const canonical = formatCidr(cidr);
  if (canonical !== text) {
    const why = cidr.address.some((b, i) => b !== bytes[i]) ? 'has host bits set' : 'is not in canonical form';
    return { reason: 'NON_CANONICAL_CIDR', description: `${quote(text)} ${why}; write ${canonical}` };
  }
  return cidr;
}

/** Narrows the result of {@link parseCanonicalCidr}. */
export function isCidrProblem(value: Cidr | CidrProblem): value is CidrProblem {
  return 'reason' in value;
}
