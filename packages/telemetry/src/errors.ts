/**
 * The errors of `@edgeplane/telemetry`. Telemetry never throws into the code it observes:
 * export and flush failures are logged through `diag` and swallowed. The one error a caller
 * can see is a start-up failure that the process owner (`main.ts`) must decide about.
 */

/**
 * Thrown (as a rejection) by `startTelemetry` when a resource it was asked to open cannot be
 * opened, such as a Prometheus port already in use. The message names the operation
 * (`listen prometheus 0.0.0.0:9464`); the underlying error is `cause`. Nothing stays
 * registered or open when this is thrown.
 */
export class TelemetryStartError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = 'TelemetryStartError';
  }
}
