import type { NodeCondition } from '@edgeplane/proto';

/** The condition types the agent raises (NodeCondition.type in node.proto). */
export type ConditionType = 'rollback-refused' | 'intent-stale' | 'log-message-rejected';

/**
 * The standing problems this agent reports (NodeCondition), as a set that calls `onChange`
 * when it changes: the owner sends a ConditionReport and puts the set in every hello.
 * Pure: owns nothing.
 */
export class Conditions {
  #held = new Map<string, NodeCondition>();
  #onChange: (conditions: NodeCondition[]) => void;

  constructor(onChange: (conditions: NodeCondition[]) => void = () => undefined) {
    this.#onChange = onChange;
  }

  /** Raises (or updates the message of) a condition; `since` stays that of its first raise. */
  set(type: ConditionType, message: string, revision = 0n, now = new Date()): void {
    const had = this.#held.get(type);
    const next: NodeCondition = { type, message: message.slice(0, 512), since: had?.since ?? now, revision };
    if (had && had.message === next.message && had.revision === revision) return;
    this.#held.set(type, next);
    this.#onChange(this.list());
  }

  /** Clears a condition; no-op when it does not hold. */
  clear(type: ConditionType): void {
    if (this.#held.delete(type)) this.#onChange(this.list());
  }

  /** Whether the condition holds. */
  has(type: ConditionType): boolean {
    return this.#held.has(type);
  }

  /** The conditions that hold now (copies). */
  list(): NodeCondition[] {
    return [...this.#held.values()].map((c) => ({ ...c }));
  }
}
