// Decoded rules without spare capacity. The generated decode fills a repeated field by pushing
// element after element, and V8 gives an array 16 slots at its first push: a rule naming one
// address holds 144 bytes of elements for 8. At 65,536 rules that is ~10 MiB of heap in every
// process that keeps the policy (the controller's chain, each agent's), for as long as it keeps
// it (bench/README.md, "agent", "Memory"). Exact copies cost one pass at decode.
import type { LogEntry, Snapshot } from '../gen/edgeplane/v1/log.js';
import type { Rule } from '../gen/edgeplane/v1/policy.js';

/** Gives every rule's repeated fields arrays of exactly their length, in place. */
export function compactRules(rules: readonly Rule[]): void {
  for (const rule of rules) {
    if (rule.sourceCidrs.length > 0) rule.sourceCidrs = rule.sourceCidrs.slice();
    if (rule.destinationCidrs.length > 0) rule.destinationCidrs = rule.destinationCidrs.slice();
    if (rule.destinationPorts.length > 0) rule.destinationPorts = rule.destinationPorts.slice();
    if (rule.sourcePrefixLists.length > 0) rule.sourcePrefixLists = rule.sourcePrefixLists.slice();
    if (rule.destinationPrefixLists.length > 0) rule.destinationPrefixLists = rule.destinationPrefixLists.slice();
  }
}

/** {@link compactRules} for the rules a decoded log entry carries: its upserts' and its patches' splices'. */
export function compactEntryRules(entry: LogEntry): void {
  for (const policy of entry.change?.upserts ?? []) compactRules(policy.spec?.rules ?? []);
  for (const patch of entry.change?.policyPatches ?? []) for (const splice of patch.splices) compactRules(splice.rules);
}

/** {@link compactRules} for a decoded snapshot's policies. */
export function compactSnapshotRules(snapshot: Snapshot): void {
  for (const policy of snapshot.policies) compactRules(policy.spec?.rules ?? []);
}
