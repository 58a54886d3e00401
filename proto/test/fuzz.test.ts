// Property-based fuzzing of the parsers that read untrusted input: the log envelope decoder,
// the label-selector and CIDR parsers. A fixed seed and a fixed number of runs keep CI
// reproducible (fast-check prints the seed and the shrunk counterexample on failure); the
// whole file stays within a few seconds. Work is counted, not timed.
import test from 'ava';
import fc from 'fast-check';
import { generateKeyPairSync, sign } from 'node:crypto';
import {
  LabelSelectorSyntaxError,
  LogEntry,
  MAX_QUOTED_LENGTH,
  SignatureError,
  decodeSignedLogEntry,
  encodeSignedLogEntry,
  formatAddress,
  formatCidr,
  formatLabelSelector,
  isAddressProblem,
  isCidrProblem,
  keyIdOf,
  openLogEntry,
  parseCanonicalAddress,
  parseCanonicalCidr,
  parseLabelSelector,
  signLogEntry,
  type ParseStats,
} from '@edgeplane/proto';

const SEED = 20261130;
const RUNS = 1500;
const params = { seed: SEED, numRuns: RUNS };
// Signature checks cost about half a millisecond each: fewer runs for the envelope.
const envelopeParams = { seed: SEED, numRuns: 400 };

const { privateKey, publicKey } = generateKeyPairSync('ed25519');
const trusted = new Map([[keyIdOf(publicKey), publicKey]]);
const valid = encodeSignedLogEntry(
  signLogEntry(
    LogEntry.fromPartial({ revision: 7n, previousHash: Buffer.alloc(32, 1), change: { upserts: [{ metadata: { name: 'web', labels: { a: 'b' } }, spec: { rules: [{ priority: 1, sourceCidrs: ['10.0.0.0/8'] }] } }], deletes: ['old'], rollouts: [] }, controllerId: 'c1' }),
    privateKey,
  ),
);

/** Runs `fn` and returns normally if it succeeded or threw one of `allowed`; rethrows anything else. */
function onlyThrows(allowed: (new (...a: never[]) => Error)[], fn: () => unknown): void {
  try {
    fn();
  } catch (err) {
    if (!allowed.some((c) => err instanceof c)) throw err;
  }
}

const mutation = fc.oneof(
  fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
  fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }),
  fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), bytes: fc.uint8Array({ maxLength: 16 }) }),
  fc.record({ kind: fc.constant('set' as const), at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }),
);
type Mutation = typeof mutation extends fc.Arbitrary<infer M> ? M : never;

function mutate(bytes: Uint8Array, ms: Mutation[]): Uint8Array {
  let b = Buffer.from(bytes);
  for (const m of ms) {
    const at = b.length === 0 ? 0 : m.at % b.length;
    if (m.kind === 'flip' && b.length) b[at]! ^= 1 << m.bit;
    else if (m.kind === 'set' && b.length) b[at] = m.value;
    else if (m.kind === 'truncate') b = b.subarray(0, at);
    else if (m.kind === 'insert') b = Buffer.concat([b.subarray(0, at), m.bytes, b.subarray(at)]);
  }
  return b;
}

test('log envelope decoder - random bytes decode or fail with SignatureError', (t) => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 2048 }), (bytes) => {
      onlyThrows([SignatureError], () => openLogEntry(decodeSignedLogEntry(bytes), trusted));
    }),
    envelopeParams,
  );
  t.pass();
});

test('log envelope decoder - mutated valid envelopes never open, and fail only with SignatureError', (t) => {
  fc.assert(
    fc.property(fc.array(mutation, { minLength: 1, maxLength: 6 }), (ms) => {
      const bytes = mutate(valid, ms);
      let opened: LogEntry | undefined;
      onlyThrows([SignatureError], () => (opened = openLogEntry(decodeSignedLogEntry(bytes), trusted)));
      // A mutation may be a no-op (a flip then a flip back, a truncation past the end):
      // whatever opens must be exactly what was signed.
      if (opened) {
        const again = decodeSignedLogEntry(bytes);
        if (Buffer.compare(again.entry, decodeSignedLogEntry(valid).entry) !== 0) throw new Error('a changed entry opened');
      }
    }),
    envelopeParams,
  );
  t.pass();
});

test('log envelope decoder - signed garbage (a trusted key over bytes that are not an entry) is a SignatureError', (t) => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 512 }), (entry) => {
      const signed = { entry: Buffer.from(entry), signature: sign(null, entry, privateKey), keyId: keyIdOf(publicKey), format: 0 };
      onlyThrows([SignatureError], () => openLogEntry(decodeSignedLogEntry(encodeSignedLogEntry(signed)), trusted));
    }),
    envelopeParams,
  );
  t.pass();
});

const selectorToken = fc.constantFrom('a', 'role', 'x.io/k', 'v-1', '=', '==', '!=', '!', '(', ')', ',', ' ', '  ', 'in', 'notin', 'in (', ')', '-', '_', 'é', '\t', '/', '😀');
const selectorText = fc.oneof(fc.array(selectorToken, { maxLength: 60 }).map((a) => a.join('')), fc.string({ maxLength: 200, unit: 'binary' }));

test('parseLabelSelector - any text parses or fails with LabelSelectorSyntaxError, visiting each character at most once', (t) => {
  fc.assert(
    fc.property(selectorText, (text) => {
      const stats: ParseStats = { steps: 0 };
      try {
        const selector = parseLabelSelector(text, stats);
        // What parses formats back to text that parses to the same selector.
        const again = parseLabelSelector(formatLabelSelector(selector));
        if (JSON.stringify(again) !== JSON.stringify(selector)) throw new Error(`round trip changed ${JSON.stringify(text)}`);
      } catch (err) {
        if (!(err instanceof LabelSelectorSyntaxError)) throw err;
        if (err.message.length > 3 * MAX_QUOTED_LENGTH + 200) throw new Error(`long message: ${err.message.length}`);
      }
      if (stats.steps > text.length) throw new Error(`${stats.steps} steps for ${text.length} characters`);
    }),
    params,
  );
  t.pass();
});

const cidrToken = fc.constantFrom('1', '0', '10', '255', '256', '.', ':', '::', '/', 'a', 'f', 'ffff', 'A', '%', ' ', '01', '32', '128', '129');
const cidrText = fc.oneof(fc.array(cidrToken, { maxLength: 24 }).map((a) => a.join('')), fc.string({ maxLength: 80, unit: 'binary' }), fc.ipV4().map((a) => `${a}/24`), fc.ipV6().map((a) => `${a}/64`));

test('parseCanonicalCidr - any text is a CIDR or a problem (never a throw), descriptions stay short, canonical text round-trips', (t) => {
  fc.assert(
    fc.property(cidrText, (text) => {
      const r = parseCanonicalCidr(text);
      if (isCidrProblem(r)) {
        if (r.description.length > 2 * MAX_QUOTED_LENGTH + 200) throw new Error(`long description: ${r.description.length}`);
      } else if (r.address.length !== (r.family === 4 ? 4 : 16) || r.prefixLength > r.address.length * 8) {
        throw new Error(`bad parse of ${text}`);
      } else if (formatCidr(r) !== text) {
        throw new Error(`${text} was accepted but its canonical form is ${formatCidr(r)}`);
      }
    }),
    params,
  );
  t.pass();
});

const addressText = fc.oneof(fc.array(cidrToken, { maxLength: 24 }).map((a) => a.join('')), fc.string({ maxLength: 80, unit: 'binary' }), fc.ipV4(), fc.ipV6(), fc.ipV4().map((a) => `${a}/32`));

test('parseCanonicalAddress - any text is an address or a problem (never a throw), descriptions stay short, canonical text round-trips', (t) => {
  fc.assert(
    fc.property(addressText, (text) => {
      const r = parseCanonicalAddress(text);
      if (isAddressProblem(r)) {
        if (r.description.length > 2 * MAX_QUOTED_LENGTH + 200) throw new Error(`long description: ${r.description.length}`);
      } else if (r.bytes.length !== (r.family === 4 ? 4 : 16)) {
        throw new Error(`bad parse of ${text}`);
      } else if (formatAddress(r.family, r.bytes) !== text) {
        throw new Error(`${text} was accepted but its canonical form is ${formatAddress(r.family, r.bytes)}`);
      }
    }),
    params,
  );
  t.pass();
});
