// Which policy a patched policy was made from (applyPolicyPatch), so validatePolicy can check
// only what the patch changed. Internal to this package.
import type { RuleSplice } from '../gen/edgeplane/v1/log.js';
import type { Policy } from '../gen/edgeplane/v1/policy.js';

/** A patched policy's base (weakly: a chain does not keep every version alive) and the splices that made it. */
export interface PatchLineage {
  readonly base: WeakRef<Policy>;
  readonly splices: readonly RuleSplice[];
}

/** By the patched policy object (policies are never modified once made). */
export const patchLineage = new WeakMap<Policy, PatchLineage>();
