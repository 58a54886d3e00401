/**
 * The exit codes of the `edgeplane` command. Scripts rely on them, so a code keeps its meaning
 * once released; add new ones at the end.
 */
export const ExitCode = {
  /** Everything asked for was done. */
  OK: 0,
  /** An error: a bad manifest, a rejected request, a missing resource, an unreachable server. */
  ERROR: 1,
  /** Bad command line: unknown command or flag, missing argument. Nothing was sent. */
  USAGE: 2,
  /** `apply --wait`: a node rejected (NACKed) the new revision. */
  NACK: 3,
  /** `apply --wait`: the nodes did not all reach the new revision within --timeout. */
  TIMEOUT: 4,
  /** `diff --exit-code`: the manifests differ from what the server holds. */
  DIFFERENT: 5,
  /** `rollout status --watch`, `apply --wait`: the rollout failed (not on a NACK) or was aborted. */
  ROLLOUT_FAILED: 6,
} as const;

/** One of the {@link ExitCode} values. */
export type ExitCodeValue = (typeof ExitCode)[keyof typeof ExitCode];

/** The exit-code table as printed by `--help`. */
export const EXIT_CODE_HELP = `Exit codes:
  0  success
  1  error (bad manifest, request rejected by the server, not found, server unreachable)
  2  usage error (unknown command or flag, missing argument); nothing was sent
  3  apply --wait: a node NACKed the new revision (node and reason are printed)
  4  apply --wait: not every node reached the new revision within --timeout
  5  diff --exit-code: there are differences
  6  rollout status --watch, apply --wait: the rollout failed or was aborted (the reason is printed)`;
