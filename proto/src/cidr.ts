// IPv4/IPv6 addresses and CIDR prefixes: the one parser of the project. The controller's policy
// validation (API side) and the node agent's rule-set compiler and reference classifier
// (packet side) both read addresses through parseAddress, so they cannot disagree on what an
// address is. Parsing is a single left-to-right scan with no regular expressions or splits,
// and refuses text longer than the longest address before reading it: linear and bounded.
//
// Two views of one model remain, on purpose:
// - parseCidr (packet side): any valid address text; a bare address is a host prefix and host
//   bits are cleared. A prefix is a set of addresses, and the compiler and the classifier care
//   only about that set (the agent also compiles rule sets that never passed the API).
// - parseCanonicalCidr (API side): the same parse, then insists on one spelling per network
//   (prefix length present, host bits zero, RFC 5952 for IPv6), so stored intent diffs and
//   compares as text, and says what to write instead.

import { quote } from './limits.js';

/** A parsed prefix: the network address (4 or 16 bytes, host bits zero) and its length. */
export interface Cidr {
  readonly family: 4 | 6;
  /** The network address, host bits zero. 4 bytes for IPv4, 16 for IPv6. */
  readonly address: Uint8Array;
  readonly prefixLength: number;
}

/** Why a CIDR string was refused, with the canonical spelling when one exists. */
export interface CidrProblem {
  reason: 'MALFORMED_CIDR' | 'NON_CANONICAL_CIDR';
  description: string;
}

/** Longest IPv4 text: 255.255.255.255. */
const MAX_IPV4_TEXT = 15;
/** Longest IPv6 text without a zone: ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255. */
const MAX_IPV6_TEXT = 45;

/**
 * Characters of the longest address text the parsers look at (a full IPv6 address with an
 * embedded dotted quad). Longer text is refused before any parsing.
 */
export const MAX_ADDRESS_LENGTH = MAX_IPV6_TEXT;
/** Longest CIDR text: an IPv6 address, '/', 3 digits. */
const MAX_CIDR_TEXT = MAX_IPV6_TEXT + 4;

const DOT = 46;
const COLON = 58;

/**
 * Parses a dotted-quad IPv4 address: four decimal parts of 1 to 3 digits, each at most 255,
 * without leading zeros (so `010.0.0.1` is refused rather than read as octal or decimal).
 * @returns 4 bytes, or undefined if `text` is not one.
 */
export function parseIPv4(text: string): Uint8Array | undefined {
  const out = new Uint8Array(4);
  return parseIPv4Into(text, 0, text.length, out, 0) ? out : undefined;
}

/**
 * parseIPv4() of `text` from `start` to `end` (exclusive), writing the 4 bytes at `out[at]`
 * instead of allocating them: how large lists are parsed straight into packed buffers.
 * @returns whether it is an IPv4 address (out[at..at+4] is unspecified when not).
 */
export function parseIPv4Into(text: string, start: number, end: number, out: Uint8Array, at: number): boolean {
  if (end - start > MAX_IPV4_TEXT) return false;
  let part = 0;
  let value = 0;
  let digits = 0;
  for (let i = start; i <= end; i++) {
    const code = i < end ? text.charCodeAt(i) : DOT; // the end closes the last part like a '.'
    if (code === DOT) {
      if (digits === 0 || part > 3 || value > 255) return false;
      out[at + part++] = value;
      value = 0;
      digits = 0;
      continue;
    }
    if (code < 48 || code > 57) return false;
    if (digits > 0 && value === 0) return false; // leading zero
    if (++digits > 3) return false;
    value = value * 10 + (code - 48);
  }
  return part === 4;
}

function hexValue(code: number): number {
  if (code >= 48 && code <= 57) return code - 48;
  if (code >= 97 && code <= 102) return code - 87;
  if (code >= 65 && code <= 70) return code - 55;
  return -1;
}

/**
 * Parses an IPv6 address in any RFC 4291 (section 2.2) text form: eight groups of 1 to 4 hex
 * digits, at most one `::` standing for one or more zero groups, optionally ending in a dotted
 * quad for the last 32 bits. Zone ids (`%eth0`) are refused: a rule names no link.
 * @returns 16 bytes, or undefined if `text` is not one.
 */
export function parseIPv6(text: string): Uint8Array | undefined {
  const length = text.length;
  if (length < 2 || length > MAX_IPV6_TEXT) return undefined;
  const groups = new Uint16Array(8);
  let count = 0;
  let gap = -1; // groups before the '::', or -1 without one
  let i = 0;
  if (text.charCodeAt(0) === COLON) {
    if (text.charCodeAt(1) !== COLON) return undefined;
    gap = 0;
    i = 2;
  }
  while (i < length) {
    if (count === 8) return undefined;
    const start = i;
    let value = 0;
    for (let digit = hexValue(text.charCodeAt(i)); digit >= 0 && i - start < 5; digit = hexValue(text.charCodeAt(i))) {
      value = value * 16 + digit;
      i++;
    }
    if (i < length && text.charCodeAt(i) === DOT) {
      // A trailing dotted quad: the last two groups.
      const v4 = count <= 6 ? parseIPv4(text.slice(start)) : undefined;
      if (v4 === undefined) return undefined;
      groups[count++] = ((v4[0] as number) << 8) | (v4[1] as number);
      groups[count++] = ((v4[2] as number) << 8) | (v4[3] as number);
      i = length;
      break;
    }
    const digits = i - start;
    if (digits === 0 || digits > 4) return undefined;
    groups[count++] = value;
    if (i === length) break;
    if (text.charCodeAt(i) !== COLON) return undefined;
    i++;
    if (text.charCodeAt(i) === COLON) {
      if (gap >= 0) return undefined;
      gap = count;
      i++;
    } else if (i === length) {
      return undefined; // a trailing single ':'
    }
  }
  if (gap < 0 ? count !== 8 : count > 7) return undefined;
  const out = new Uint8Array(16);
  const shift = gap < 0 ? 0 : 8 - count; // zero groups the '::' stands for
  for (let g = 0; g < count; g++) {
    const at = gap >= 0 && g >= gap ? g + shift : g;
    out[2 * at] = (groups[g] as number) >> 8;
    out[2 * at + 1] = (groups[g] as number) & 0xff;
  }
  return out;
}

/**
 * Parses an IPv4 or IPv6 address (parseIPv4 or parseIPv6 by whether `text` has a ':').
 * @returns 4 or 16 bytes, or undefined if `text` is not an address.
 */
export function parseAddress(text: string): Uint8Array | undefined {
  return text.includes(':') ? parseIPv6(text) : parseIPv4(text);
}

/**
 * Parses `address/length`, the packet-side view: a bare address is a full-length prefix and
 * host bits beyond the prefix are cleared. The prefix length is 1 to 3 decimal digits, at most
 * 32 (IPv4) or 128 (IPv6).
 * @returns the prefix, or undefined if `text` is not one.
 */
export function parseCidr(text: string): Cidr | undefined {
  const family = cidrFamily(text);
  const address = new Uint8Array(family === 4 ? 4 : 16);
  const prefixLength = parseCidrInto(text, address, 0);
  return prefixLength < 0 ? undefined : { family, address, prefixLength };
}

/** @returns the family parseCidr and parseCidrInto read `text` as (6 when it has a ':'). */
export function cidrFamily(text: string): 4 | 6 {
  return text.includes(':') ? 6 : 4;
}

/**
 * parseCidr() without allocating: writes the network address (host bits cleared; 4 bytes for
 * IPv4, 16 for IPv6, by cidrFamily(text)) at `out[at]`, so a million prefixes are parsed
 * straight into the buffer that holds them. Linear in `text`, bounded by the longest CIDR text.
 * @param hostBits 'refuse': a prefix with host bits set is refused (-1) rather than cleared.
 * @returns the prefix length, or -1 if `text` is not a prefix (out[at..] is then unspecified).
 */
export function parseCidrInto(text: string, out: Uint8Array, at: number, hostBits: 'clear' | 'refuse' = 'clear'): number {
  if (text.length > MAX_CIDR_TEXT) return -1;
  const slash = text.indexOf('/');
  const end = slash < 0 ? text.length : slash;
  let max = 32;
  if (cidrFamily(text) === 4) {
    if (!parseIPv4Into(text, 0, end, out, at)) return -1;
  } else {
    const address = parseIPv6(slash < 0 ? text : text.slice(0, slash));
    if (address === undefined) return -1;
    out.set(address, at);
    max = 128;
  }
  let prefixLength = max;
  if (slash >= 0) {
    const digits = text.length - slash - 1;
    if (digits < 1 || digits > 3) return -1;
    prefixLength = 0;
    for (let i = slash + 1; i < text.length; i++) {
      const code = text.charCodeAt(i);
      if (code < 48 || code > 57) return -1;
      prefixLength = prefixLength * 10 + (code - 48);
    }
    if (prefixLength > max) return -1;
  }
  // Clear the host bits in place (maskHostBits without the copy).
  const full = prefixLength >> 3;
  const bytes = max >> 3;
  if (full < bytes) {
    const kept = (out[at + full] as number) & (0xff00 >> (prefixLength & 7));
    if (hostBits === 'refuse') {
      if (kept !== out[at + full]) return -1;
      for (let i = at + full + 1; i < at + bytes; i++) if (out[i] !== 0) return -1;
    }
    out[at + full] = kept;
    out.fill(0, at + full + 1, at + bytes);
  }
  return prefixLength;
}

/**
 * parseCanonicalCidr() without allocating when the text is canonical (IPv4: one parse into
 * `out[at]`, no text formatted), for validating large lists: the caller asks parseCanonicalCidr
 * why only when this refuses.
 * @returns the prefix length (the address written at `out[at]`, 4 or 16 bytes by cidrFamily), or
 * -1 when parseCanonicalCidr would return a problem.
 */
export function parseCanonicalCidrInto(text: string, out: Uint8Array, at: number): number {
  const slash = text.indexOf('/');
  if (slash < 0 || (text.length - slash > 2 && text.charCodeAt(slash + 1) === 48)) return -1;
  if (cidrFamily(text) === 4) return parseCidrInto(text, out, at, 'refuse'); // one spelling per IPv4 address
  const cidr = parseCanonicalCidr(text);
  if (isCidrProblem(cidr)) return -1;
  out.set(cidr.address, at);
  return cidr.prefixLength;
}

/** @returns true if `address` (4 or 16 bytes) has the family of `cidr` and lies inside it. */
export function cidrContains(cidr: Cidr, address: Uint8Array): boolean {
  if (address.length !== cidr.address.length) return false;
  const full = cidr.prefixLength >> 3;
  for (let i = 0; i < full; i++) if (address[i] !== cidr.address[i]) return false;
  const rest = cidr.prefixLength & 7;
  if (rest === 0) return true;
  const mask = (0xff << (8 - rest)) & 0xff;
  return ((address[full] as number) & mask) === cidr.address[full];
}

/** @returns a copy of `bytes` with every bit past `prefixLength` cleared. */
export function maskHostBits(bytes: Uint8Array, prefixLength: number): Uint8Array {
  const out = new Uint8Array(bytes);
  const full = prefixLength >> 3;
  if (full < out.length) {
    out[full] = (out[full] as number) & (0xff00 >> (prefixLength & 7));
    out.fill(0, full + 1);
  }
  return out;
}

/**
 * Formats IPv6 bytes in the RFC 5952 canonical text form (section 4: lower case, no leading
 * zeros, the longest run of two or more zero groups, the first if tied, as `::`), exactly as
 * the WHATWG URL standard serializes an IPv6 host (so no dotted quad for ::ffff:0:0/96).
 */
export function formatIPv6(bytes: Uint8Array): string {
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(((bytes[i] as number) << 8) | (bytes[i + 1] as number));
  let bestStart = -1;
  let bestLength = 1; // a single zero group is never compressed
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let end = i;
    while (end < 8 && groups[end] === 0) end++;
    if (end - i > bestLength) {
      bestStart = i;
      bestLength = end - i;
    }
    i = end;
  }
  const hex = (from: number, to: number): string => groups.slice(from, to).map((group) => group.toString(16)).join(':');
  return bestStart < 0 ? hex(0, 8) : `${hex(0, bestStart)}::${hex(bestStart + bestLength, 8)}`;
}

/** Formats an address of either family (IPv6 in RFC 5952 form). */
export function formatAddress(family: 4 | 6, bytes: Uint8Array): string {
  return family === 4 ? [...bytes].join('.') : formatIPv6(bytes);
}

/** Returns the canonical text of a CIDR. */
export function formatCidr(cidr: Cidr): string {
  return `${formatAddress(cidr.family, cidr.address)}/${cidr.prefixLength}`;
}

/**
 * Parses a CIDR and insists on its canonical spelling, the API-side view: a prefix length,
 * host bits zero, no leading zeros, and for IPv6 the RFC 5952 form. The grammar is parseCidr's.
 * @returns the CIDR, or the problem (with the canonical spelling in the description when the
 * input names a valid network).
 */
export function parseCanonicalCidr(text: string): Cidr | CidrProblem {
  if (text.length > MAX_CIDR_TEXT) return { reason: 'MALFORMED_CIDR', description: `${quote(text)} is not an IPv4 or IPv6 CIDR` };
  const cidr = parseCidr(text);
  const slash = text.indexOf('/');
  // The error paths parse the address again to say what is wrong; the accepting path parses once.
  const written = (): Uint8Array | undefined => parseAddress(slash < 0 ? text : text.slice(0, slash));
  if (cidr === undefined) {
    const bytes = written();
    if (bytes === undefined) return { reason: 'MALFORMED_CIDR', description: `${quote(text)} is not an IPv4 or IPv6 CIDR` };
    return { reason: 'MALFORMED_CIDR', description: `${quote(text)}: prefix length must be 0 to ${bytes.length * 8}` };
  }
  if (slash < 0) {
    return { reason: 'MALFORMED_CIDR', description: `${quote(text)} has no prefix length (did you mean ${formatCidr(cidr)}?)` };
  }
  if (text.length - slash > 2 && text.charCodeAt(slash + 1) === 48) {
    return { reason: 'MALFORMED_CIDR', description: `${quote(text)}: prefix length must be 0 to ${cidr.address.length * 8}` };
  }
  const canonical = formatCidr(cidr);
  if (canonical !== text) {
    const bytes = written() as Uint8Array;
    const why = cidr.address.some((b, i) => b !== bytes[i]) ? 'has host bits set' : 'is not in canonical form';
    return { reason: 'NON_CANONICAL_CIDR', description: `${quote(text)} ${why}; write ${canonical}` };
  }
  return cidr;
}

/** Narrows the result of {@link parseCanonicalCidr}. */
export function isCidrProblem(value: Cidr | CidrProblem): value is CidrProblem {
  return 'reason' in value;
}

/** A parsed address: its family and bytes (4 or 16). */
export interface Address {
  readonly family: 4 | 6;
  readonly bytes: Uint8Array;
}

/** Why an address string was refused, with the canonical spelling when one exists. */
export interface AddressProblem {
  reason: 'MALFORMED_ADDRESS' | 'NON_CANONICAL_ADDRESS';
  description: string;
}

/**
 * Parses one IPv4 or IPv6 address and insists on its canonical spelling, the API-side view of
 * a single address (a service VIP or backend): no prefix length, no leading zeros, and for IPv6
 * the RFC 5952 form, so a stored address compares as text. The grammar is parseAddress's.
 * @returns the address, or the problem (with the canonical spelling when the text is an address
 * written another way).
 */
export function parseCanonicalAddress(text: string): Address | AddressProblem {
  if (text.length > MAX_CIDR_TEXT) return { reason: 'MALFORMED_ADDRESS', description: `${quote(text)} is not an IPv4 or IPv6 address` };
  if (text.includes('/')) {
    const cidr = parseCidr(text);
    const full = cidr !== undefined && cidr.prefixLength === cidr.address.length * 8;
    return { reason: 'MALFORMED_ADDRESS', description: `${quote(text)} is a prefix; write one address without a prefix length${full ? ` (${formatAddress(cidr.family, cidr.address)})` : ''}` };
  }
  const bytes = parseAddress(text);
  if (bytes === undefined) return { reason: 'MALFORMED_ADDRESS', description: `${quote(text)} is not an IPv4 or IPv6 address` };
  const family = bytes.length === 4 ? 4 : 6;
  const canonical = formatAddress(family, bytes);
  if (canonical !== text) return { reason: 'NON_CANONICAL_ADDRESS', description: `${quote(text)} is not in canonical form; write ${canonical}` };
  return { family, bytes };
}

/** Narrows the result of {@link parseCanonicalAddress}. */
export function isAddressProblem(value: Address | AddressProblem): value is AddressProblem {
  return 'reason' in value;
}
