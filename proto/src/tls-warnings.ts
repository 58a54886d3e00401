/**
 * Drops Node.js's DEP0123 warning ("Setting the TLS ServerName to an IP address is not permitted
 * by RFC 6066", https://nodejs.org/api/deprecations.html#DEP0123) from this process, and no other
 * warning. grpc-js passes a target's host as the TLS servername even when it is an IP address,
 * so every process that dials the controller by IP (the CLI, each agent) printed it once per
 * start. The peer's certificate is still checked against the IP; RFC 6066 only forbids sending
 * it as SNI. For a process's main module; idempotent.
 */
export function quietIpServernameWarning(): void {
  if (quieted) return;
  quieted = true;
  const emitWarning = process.emitWarning.bind(process) as (...args: unknown[]) => void;
  process.emitWarning = ((warning: string | Error, ...rest: unknown[]) => {
    const code = typeof rest[0] === 'object' && rest[0] !== null ? (rest[0] as { code?: string }).code : rest[1];
    if (code !== 'DEP0123') emitWarning(warning, ...rest);
  }) as typeof process.emitWarning;
}

let quieted = false;
