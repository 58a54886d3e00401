// The one address and CIDR parser (proto/src/cidr.ts), which policy validation and the node
// agent's compiler share. Property tests hold it to node:net's isIPv4/isIPv6 and to round trips.
import { isIPv4, isIPv6 } from 'node:net';
import test from 'ava';
import fc from 'fast-check';
import { cidrContains, cidrFamily, formatIPv6, isCidrProblem, parseAddress, parseCanonicalCidr, parseCanonicalCidrInto, parseCidr, parseCidrInto, parseIPv4, parseIPv6 } from '@edgeplane/proto';

const addressText = (alphabet: string, maxLength: number): fc.Arbitrary<string> => fc.array(fc.constantFrom(...alphabet.split('')), { maxLength }).map((chars) => chars.join(''));

test('parseIPv6 - accepts exactly what node:net isIPv6 accepts (zone ids aside)', (t) => {
  // '::' twice in the alphabet makes compressed forms common.
  fc.assert(
    fc.property(addressText('0123456789abcdefABCDEF:.::', 46), (text) => (parseIPv6(text) !== undefined) === isIPv6(text)),
    { numRuns: 50_000 },
  );
  // Near-valid forms: 1 to 9 groups of 0 to 5 hex digits, maybe a '::', maybe a dotted quad.
  const group = addressText('0123456789abcdefF', 5);
  const quad = fc.tuple(fc.nat(300), fc.nat(300), fc.nat(300), fc.nat(300)).map((parts) => parts.join('.'));
  const nearValid = fc
    .tuple(fc.array(group, { minLength: 1, maxLength: 9 }), fc.option(fc.nat(9)), fc.option(quad))
    .map(([groups, gap, v4]) => {
      const parts = [...groups, ...(v4 === null ? [] : [v4])];
      if (gap !== null) parts.splice(Math.min(gap, parts.length), 0, '');
      return parts.join(':').replace(/^:(?!:)/, '::').replace(/(?<!:):$/, '::');
    });
  fc.assert(fc.property(nearValid, (text) => (parseIPv6(text) !== undefined) === isIPv6(text)), { numRuns: 50_000 });
  t.is(parseIPv6('fe80::1%eth0'), undefined, 'a rule names no link');
  t.true(isIPv6('fe80::1%eth0'));
});

test('parseIPv4 - accepts exactly what node:net isIPv4 accepts', (t) => {
  fc.assert(fc.property(addressText('0123456789.', 18), (text) => (parseIPv4(text) !== undefined) === isIPv4(text)), { numRuns: 50_000 });
  t.deepEqual(parseIPv4('255.0.10.1'), new Uint8Array([255, 0, 10, 1]));
});

test('parseAddress - every spelling of an IPv6 address parses to its bytes', (t) => {
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 16, maxLength: 16 }), fc.boolean(), (bytes, upper) => {
      const groups = Array.from({ length: 8 }, (_, i) => (((bytes[2 * i] as number) << 8) | (bytes[2 * i + 1] as number)).toString(16));
      const full = groups.join(':');
      const padded = groups.map((g) => g.padStart(4, '0')).join(':');
      const quad = `${groups.slice(0, 6).join(':')}:${[...bytes.subarray(12)].join('.')}`;
      return [formatIPv6(bytes), full, padded, quad].every((text) => {
        const parsed = parseAddress(upper ? text.toUpperCase() : text);
        return parsed !== undefined && parsed.every((byte, i) => byte === bytes[i]);
      });
    }),
    { numRuns: 5_000 },
  );
  t.pass();
});

test('formatIPv6 - RFC 5952 text, as the WHATWG URL standard serializes an IPv6 host', (t) => {
  // Runs of zero groups are what compression is about: draw groups from a small set.
  const groups = fc.array(fc.constantFrom(0, 0, 0, 1, 0xffff, 0xdb8), { minLength: 8, maxLength: 8 });
  fc.assert(
    fc.property(groups, (words) => {
      const bytes = new Uint8Array(words.flatMap((word) => [word >> 8, word & 0xff]));
      return formatIPv6(bytes) === new URL(`http://[${words.map((word) => word.toString(16)).join(':')}]/`).hostname.slice(1, -1);
    }),
    { numRuns: 20_000 },
  );
  t.is(formatIPv6(new Uint8Array(16)), '::');
  t.is(formatIPv6(parseIPv6('2001:db8:0:0:1:0:0:1') as Uint8Array), '2001:db8::1:0:0:1');
  t.is(formatIPv6(parseIPv6('2001:db8:0:1:1:1:1:1') as Uint8Array), '2001:db8:0:1:1:1:1:1');
});

test('parseCidr - bounded: overlong text is refused before it is read', (t) => {
  const long = `${'1:'.repeat(500_000)}1/64`;
  t.is(parseCidr(long), undefined);
  t.is(parseAddress('1'.repeat(1_000_000)), undefined);
  t.is(parseIPv6(`::${'0'.repeat(44)}`), undefined);
  const problem = parseCanonicalCidr(`10.0.0.0/8${' '.repeat(100_000)}`);
  t.true(isCidrProblem(problem) && problem.reason === 'MALFORMED_CIDR' && problem.description.length < 200);
});

test('parseCidr and parseCanonicalCidr - one grammar: canonical text parses to the same network both ways', (t) => {
  fc.assert(
    fc.property(fc.boolean(), fc.uint8Array({ minLength: 16, maxLength: 16 }), fc.nat(128), (v4, bytes, length) => {
      const address = v4 ? bytes.subarray(0, 4) : bytes;
      const prefixLength = length % (address.length * 8 + 1);
      const loose = parseCidr(`${v4 ? [...address].join('.') : formatIPv6(address)}/${prefixLength}`);
      if (loose === undefined) return false;
      const strict = parseCanonicalCidr(`${v4 ? [...loose.address].join('.') : formatIPv6(loose.address)}/${prefixLength}`);
      return !isCidrProblem(strict) && strict.prefixLength === loose.prefixLength && strict.address.every((byte, i) => byte === loose.address[i]) && cidrContains(loose, address);
    }),
    { numRuns: 5_000 },
  );
  t.pass();
});

// Near-CIDR text: addresses with host bits or leading zeros, lengths with leading zeros or out of range.
const cidrText = fc.oneof(
  fc.tuple(fc.array(fc.constantFrom('0', '1', '00', '01', '10', '128', '192', '255', '256'), { minLength: 3, maxLength: 5 }), fc.constantFrom('', '/', '/0', '/00', '/8', '/08', '/24', '/25', '/32', '/33', '/128')).map(([parts, length]) => parts.join('.') + length),
  fc.tuple(addressText('0123456789abcdef:.::', 40), fc.constantFrom('', '/0', '/01', '/48', '/64', '/128', '/129')).map(([address, length]) => address + length),
);

test('parseCidrInto and parseCanonicalCidrInto - write what parseCidr and parseCanonicalCidr return, and refuse what they refuse', (t) => {
  const out = new Uint8Array(20).fill(0xee);
  fc.assert(
    fc.property(cidrText, (text) => {
      const loose = parseCidr(text);
      const looseLength = parseCidrInto(text, out, 2);
      if (loose === undefined ? looseLength !== -1 : looseLength !== loose.prefixLength || cidrFamily(text) !== loose.family || !loose.address.every((b, i) => out[2 + i] === b)) return false;
      const strict = parseCanonicalCidr(text);
      const strictLength = parseCanonicalCidrInto(text, out, 2);
      if (isCidrProblem(strict)) return strictLength === -1;
      return strictLength === strict.prefixLength && strict.address.every((b, i) => out[2 + i] === b);
    }),
    { numRuns: 50_000 },
  );
  t.is(parseCanonicalCidrInto('10.0.0.1/24', out, 0), -1, 'host bits set');
  t.is(parseCidrInto('10.0.0.1/24', out, 0), 24, 'the packet side clears them');
  t.deepEqual([...out.subarray(0, 4)], [10, 0, 0, 0]);
  t.is(parseCanonicalCidrInto('10.0.0.0/024', out, 0), -1, 'a leading zero in the length');
  t.is(parseCanonicalCidrInto('2001:db8::/32', out, 0), 32);
  t.is(parseCanonicalCidrInto('2001:DB8::/32', out, 0), -1, 'not RFC 5952');
});
