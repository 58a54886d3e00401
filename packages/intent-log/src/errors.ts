/**
 * The log does not continue the chain this reader holds: an entry's previous hash or revision
 * does not fit, or the stream holds fewer entries than the reader has seen (a rewound or
 * forked log, e.g. after storage loss). The reader must resync from a snapshot.
 */
export class ChainError extends Error {
  override name = 'ChainError';
}

/** Entries are missing between what the reader holds and what it received. */
export class GapError extends Error {
  override name = 'GapError';
  constructor(
    message: string,
    readonly have: bigint,
    readonly got: bigint,
  ) {
    super(message);
  }
}

/** Another writer appended first: the expected last sequence did not hold. */
export class ConflictError extends Error {
  override name = 'ConflictError';
  /** The stream's last sequence when it refused the write, if the server said. */
  readonly actualLast: bigint | undefined;
  constructor(message: string, options?: ErrorOptions & { actualLast?: bigint }) {
    super(message, options);
    this.actualLast = options?.actualLast;
  }
}

/** The intent log (NATS/JetStream) could not be read or written. */
export class LogUnavailableError extends Error {
  override name = 'LogUnavailableError';
}

/** An entry or snapshot is larger than the NATS server accepts (its max_payload). */
export class EntryTooLargeError extends Error {
  override name = 'EntryTooLargeError';
  constructor(
    message: string,
    readonly size: number,
    readonly limit: number,
  ) {
    super(message);
  }
}

/** An entry or snapshot belongs to another fleet than the reader's (copied from another bus). */
export class FleetMismatchError extends Error {
  override name = 'FleetMismatchError';
}

/** NATS client credentials (creds file, JWT, seed, TLS files) are missing, unreadable or malformed. */
export class NatsCredentialsError extends Error {
  override name = 'NatsCredentialsError';
}
