// IPv4/IPv6 addresses and CIDR prefixes as bytes: what the compiler keys the LPM trie with and
// what the reference classifier compares. Parsing is strict (RFC 4291 text forms, RFC 4632
// prefixes); host bits beyond the prefix are cleared.

/** A parsed prefix: `bytes` has 4 (IPv4) or 16 (IPv6) bytes, bits past `length` zero. */
export interface Cidr {
  readonly family: 4 | 6;
  readonly bytes: Uint8Array;
  readonly length: number;
}

/**
 * Parses an IPv4 or IPv6 address (dotted quad, or hex groups with at most one `::` and an
 * optional trailing dotted quad).
 * @returns 4 or 16 bytes, or undefined if `text` is not an address.
 */
export function parseAddress(text: string): Uint8Array | undefined {
  return text.includes(':') ? parseIpv6(text) : parseIpv4(text);
}

/**
 * Parses `address/length` (a bare address is a full-length prefix).
 * @returns the prefix with host bits cleared, or undefined if `text` is not one.
 */
export function parseCidr(text: string): Cidr | undefined {
  const slash = text.indexOf('/');
  const bytes = parseAddress(slash < 0 ? text : text.slice(0, slash));
  if (bytes === undefined) return undefined;
  const family = bytes.length === 4 ? 4 : 6;
  const max = bytes.length * 8;
  let length = max;
  if (slash >= 0) {
    const digits = text.length - slash - 1;
    if (digits < 1 || digits > 3) return undefined;
    length = 0;
    for (let i = slash + 1; i < text.length; i++) {
      const code = text.charCodeAt(i);
      if (code < 48 || code > 57) return undefined;
      length = length * 10 + (code - 48);
    }
    if (length > max) return undefined;
  }
  return { family, bytes: maskBytes(bytes, length), length };
}

/** True if `address` (same family) lies inside `cidr`. */
export function cidrContains(cidr: Cidr, address: Uint8Array): boolean {
  if (address.length !== cidr.bytes.length) return false;
  const full = cidr.length >> 3;
  for (let i = 0; i < full; i++) if (address[i] !== cidr.bytes[i]) return false;
  const rest = cidr.length & 7;
  if (rest === 0) return true;
  const mask = (0xff << (8 - rest)) & 0xff;
  return ((address[full] as number) & mask) === cidr.bytes[full];
}

/** Formats 4 or 16 address bytes (IPv6 without `::` compression; for messages and tests). */
export function formatAddress(bytes: Uint8Array): string {
  if (bytes.length === 4) return Array.from(bytes).join('.');
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push((((bytes[i] as number) << 8) | (bytes[i + 1] as number)).toString(16));
  return groups.join(':');
}

/** Copy of `bytes` with every bit past `length` cleared. */
export function maskBytes(bytes: Uint8Array, length: number): Uint8Array {
  const out = new Uint8Array(bytes);
  const full = length >> 3;
  if (full < out.length) {
    out[full] = (out[full] as number) & (0xff00 >> (length & 7));
    out.fill(0, full + 1);
  }
  return out;
}

// A hand-rolled scan (no split, no regex): compiling 65,536 rules parses as many addresses.
// Same grammar as before: four decimal parts of 1-3 digits, no leading zeros, each <= 255.
function parseIpv4(text: string): Uint8Array | undefined {
  const out = new Uint8Array(4);
  let part = 0;
  let value = 0;
  let digits = 0;
  for (let i = 0; i <= text.length; i++) {
    const code = i < text.length ? text.charCodeAt(i) : 46; // end of text closes the last part like a '.'
    if (code === 46) {
      if (digits === 0 || part > 3 || value > 255) return undefined;
      out[part++] = value;
      value = 0;
      digits = 0;
      continue;
    }
    if (code < 48 || code > 57) return undefined;
    if (digits > 0 && value === 0) return undefined; // leading zero
    if (++digits > 3) return undefined;
    value = value * 10 + (code - 48);
  }
  return part === 4 ? out : undefined;
}

function parseIpv6(text: string): Uint8Array | undefined {
  const halves = text.split('::');
  if (halves.length > 2) return undefined;
  const groups = (half: string): number[] | undefined => {
    if (half === '') return [];
    const out: number[] = [];
    const parts = half.split(':');
    for (let i = 0; i < parts.length; i++) {
      const part = parts[i] as string;
      if (i === parts.length - 1 && part.includes('.')) {
        const v4 = parseIpv4(part);
        if (v4 === undefined) return undefined;
        out.push(((v4[0] as number) << 8) | (v4[1] as number), ((v4[2] as number) << 8) | (v4[3] as number));
        continue;
      }
      if (!/^[0-9a-fA-F]{1,4}$/.test(part)) return undefined;
      out.push(parseInt(part, 16));
    }
    return out;
  };
  const head = groups(halves[0] as string);
  const tail = halves.length === 2 ? groups(halves[1] as string) : [];
  if (head === undefined || tail === undefined) return undefined;
  const missing = 8 - head.length - tail.length;
  if (halves.length === 2 ? missing < 1 : missing !== 0) return undefined;
  const all = [...head, ...new Array<number>(missing).fill(0), ...tail];
  const out = new Uint8Array(16);
  all.forEach((group, i) => {
    out[2 * i] = group >> 8;
    out[2 * i + 1] = group & 0xff;
  });
  return out;
}
