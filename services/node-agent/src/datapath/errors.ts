// Errors of the node agent's datapath. Native errors (errno, verifier log) arrive already
// translated by libbpf-ts and ride along as `cause`.

/** A rule set that cannot be compiled as written (bad CIDR, port range, rate...). */
export class RuleSetError extends Error {
  /** Path of the offending field, e.g. `rules[3].dstPorts[0]`. */
  readonly field: string;

  constructor(field: string, message: string) {
    super(`${field}: ${message}`);
    this.name = 'RuleSetError';
    this.field = field;
  }
}

/** A valid rule set that exceeds a datapath capacity limit (rules, class words...). */
export class CapacityError extends Error {
  /** Which limit: 'rules', 'class-words'. */
  readonly limit: string;
  /** The limit's value. */
  readonly max: number;
  /** What the rule set needs. */
  readonly needed: number;

  constructor(limit: string, max: number, needed: number, hint: string) {
    super(`capacity ${limit}: rule set needs ${needed}, the datapath holds at most ${max}; ${hint}`);
    this.name = 'CapacityError';
    this.limit = limit;
    this.max = max;
    this.needed = needed;
  }
}

/** A datapath operation failed in the kernel: load, pin, adopt, apply, attach, detach. */
export class DatapathError extends Error {
  constructor(operation: string, options?: { cause?: unknown }) {
    super(operation, options);
    this.name = 'DatapathError';
  }
}

/**
 * An apply failed part-way and switching a role back to its previous rule set failed too: what
 * the datapath enforces on that role is not a known revision. `cause` is the apply's error.
 */
export class RollbackError extends Error {
  /** The roles left at an unknown rule set, with the error of their rollback. */
  readonly roles: ReadonlyMap<string, string>;

  constructor(operation: string, roles: ReadonlyMap<string, string>, options?: { cause?: unknown }) {
    super(operation, options);
    this.name = 'RollbackError';
    this.roles = roles;
  }
}

/** Bad input to a connection-table operation (timeouts, control endpoints, a list filter); nothing was changed. */
export class ConntrackInputError extends Error {
  /** Path of the offending field, e.g. `endpoints[2].port`. */
  readonly field: string;

  constructor(field: string, message: string) {
    super(`${field}: ${message}`);
    this.name = 'ConntrackInputError';
    this.field = field;
  }
}

/** Bad input to the Maglev table builder (table size, a backend's key or weight); nothing was built. */
export class MaglevInputError extends Error {
  /** Path of the offending field, e.g. `backends[2].weight`. */
  readonly field: string;

  constructor(field: string, message: string) {
    super(`${field}: ${message}`);
    this.name = 'MaglevInputError';
    this.field = field;
  }
}
