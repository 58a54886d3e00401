// Errors of the node agent's datapath. Native errors (errno, verifier log) arrive already
// translated by libbpf-ts and ride along as `cause`.
import type { FieldViolation } from '@edgeplane/proto';

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

/** A valid rule set (or set of services) that exceeds a datapath capacity limit (rules, class words, LB slots...). */
export class CapacityError extends Error {
  /** Which limit: 'rules', 'class-words', 'lb-services', 'lb-slots', 'lb-backends'. */
  readonly limit: string;
  /** The limit's value. */
  readonly max: number;
  /** What the rule set (or the services) need. */
  readonly needed: number;

  /** @param needs who needs it, with the verb: "rule set needs" unless told, e.g. "the 12 services that select this node need". */
  constructor(limit: string, max: number, needed: number, hint: string, needs = 'rule set needs') {
    super(`capacity ${limit}: ${needs} ${needed}, the datapath holds at most ${max}; ${hint}`);
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

/**
 * A service that cannot be compiled for this node (it fails validation again on the node, or it
 * claims the VIP, port and protocol of another service the node fronts). The whole revision is
 * refused, as for an invalid policy; nothing was built.
 */
export class ServiceCompileError extends Error {
  /** The offending service's name. */
  readonly service: string;
  /** What is wrong, as the controller's validation words it. */
  readonly violations: readonly FieldViolation[];

  constructor(service: string, message: string, violations: readonly FieldViolation[] = []) {
    super(message);
    this.name = 'ServiceCompileError';
    this.service = service;
    this.violations = violations;
  }
}
