// The agent validates every policy again before it compiles (as the controller did): one over
// MAX_POLICY_BYTES refuses the whole intent, with the controller's violation, however the agent
// came to hold it (decoded from an entry, or patched from one whose rules it sized before).
import test from 'ava';
import { MAX_POLICY_BYTES, Policy } from '@edgeplane/proto';
import { CompileError, compileIntent } from '../src/agent/compile.js';
import { policyOfSize } from '../../../test/support/sized-policy.js';

const tooLarge = [{ field: 'policy', description: `${MAX_POLICY_BYTES + 1} bytes encoded; at most ${MAX_POLICY_BYTES}`, reason: 'POLICY_TOO_LARGE' }];

test('compile size - a policy one byte over MAX_POLICY_BYTES is a CompileError with POLICY_TOO_LARGE; one at the limit compiles', (t) => {
  const atLimit = Policy.decode(Policy.encode(policyOfSize('at-limit', MAX_POLICY_BYTES)).finish());
  t.true(compileIntent([atLimit], {}).uplink.ruleSet.rules.length > 0);
  const over = Policy.decode(Policy.encode(policyOfSize('over-limit', MAX_POLICY_BYTES + 1)).finish());
  const err = t.throws(() => compileIntent([over], {}), { instanceOf: CompileError });
  t.deepEqual(err?.violations, tooLarge);
  // The rules of the policy that compiled, carried over (as a patch carries them), one byte more.
  const grown: Policy = { metadata: atLimit.metadata, spec: { ...atLimit.spec!, description: `${atLimit.spec!.description}x` } };
  t.deepEqual(t.throws(() => compileIntent([grown], {}), { instanceOf: CompileError })?.violations, tooLarge);
});
