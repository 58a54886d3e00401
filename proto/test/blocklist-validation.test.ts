// Prefix list validation (proto/src/blocklist-validation.ts): canonical prefixes, each once
// across a request's add and remove, found without a string per prefix.
import test from 'ava';
import { PrefixListUse, validatePrefixList, validatePrefixListUpdate, type PrefixList } from '@edgeplane/proto';

const list = (prefixes: string[]): PrefixList => ({ metadata: { name: 'feed', labels: {}, annotations: {}, resourceVersion: 0n, createRevision: 0n, createTime: undefined, updateTime: undefined }, spec: { nodeSelector: undefined, use: PrefixListUse.PREFIX_LIST_USE_DENY_SOURCE, prefixes, description: '' } });

test('validatePrefixListUpdate - a prefix twice across add and remove, a non-canonical one and a malformed one are each named', (t) => {
  const violations = validatePrefixListUpdate(list([]), ['192.0.2.0/24', '2001:db8::/32', '192.0.2.0/24', '10.0.0.1/8'], ['2001:db8::/32', '2001:DB8:1::/48', 'x']);
  t.deepEqual(
    violations.map((v) => [v.field, v.reason]),
    [
      ['add[2]', 'DUPLICATE_PREFIX'],
      ['add[3]', 'NON_CANONICAL_CIDR'],
      ['remove[0]', 'DUPLICATE_PREFIX'],
      ['remove[1]', 'NON_CANONICAL_CIDR'],
      ['remove[2]', 'MALFORMED_CIDR'],
    ],
  );
  t.deepEqual(validatePrefixListUpdate(list([]), ['192.0.2.0/24', '192.0.2.0/25', '::/0', '0.0.0.0/0'], []), []);
});

test('validatePrefixList - a list of 200,000 distinct prefixes is valid; one repeated at its end is found', (t) => {
  const prefixes = Array.from({ length: 200_000 }, (_, i) => `10.${(i >> 8) & 255}.${i & 255}.${i >> 16}/32`);
  t.deepEqual(validatePrefixList(list(prefixes)), []);
  const violations = validatePrefixList(list([...prefixes, prefixes[123_456]!]));
  t.deepEqual(violations.map((v) => [v.field, v.reason]), [['prefix_list.spec.prefixes[200000]', 'DUPLICATE_PREFIX']]);
});
