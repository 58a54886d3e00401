import { generateKeyPairSync } from 'node:crypto';
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Command, CommandContext, Flags } from '../command.js';
import { parseDurationMs } from '../duration.js';
import { InputError, UsageError } from '../errors.js';
import { ExitCode, type ExitCodeValue } from '../exit-codes.js';
import { renderTable } from '../render.js';

const ROLES = ['viewer', 'operator', 'admin'] as const;

const USAGE = 'usage: edgeplane cert issue --role ROLE --name NAME --out DIR | edgeplane cert list [--all] | edgeplane cert revoke SERIAL|NAME [--reason TEXT]';

/**
 * Whether a `cert revoke` argument is a serial number: hex with at least one digit 0-9 and
 * 16 or more characters (the CA's serials are 16 random bytes); a name is an RFC 1123 label.
 */
function looksLikeSerial(arg: string): boolean {
  const s = arg.replace(/:/g, '');
  return /^[0-9a-fA-F]{16,}$/.test(s);
}

/** `edgeplane cert issue`, `cert list`, `cert revoke`. */
export const certCommand: Command = {
  name: 'cert',
  summary: 'Issue, list or revoke client certificates of people and pipelines (admin)',
  usage: ['cert issue --role viewer|operator|admin --name NAME --out DIR [--lifetime 90d]', 'cert list [--all]', 'cert revoke SERIAL|NAME [--reason TEXT]'],
  details: `Generates an ECDSA P-256 key here (it never leaves this machine), has the controller's CA
sign a certificate for ROLE/NAME, and writes DIR/NAME.pem, DIR/NAME-key.pem (mode 0600) and
DIR/ca.pem. Roles: viewer (get, list, watch), operator (also apply, delete, rollouts),
admin (also tokens, revocation, certificates).

Use it with:
  EDGEPLANE_TLS_CA=DIR/ca.pem EDGEPLANE_TLS_CERT=DIR/NAME.pem EDGEPLANE_TLS_KEY=DIR/NAME-key.pem edgeplane get policies

list: every certificate the controllers issued (serial, role, name, expiry, revocation); --all
includes expired ones.

revoke: by serial number (as list prints it) or by name (every unexpired certificate of that
name). Every controller replica refuses the certificate within a minute (UNAUTHENTICATED, reason
REVOKED). Refused (FAILED_PRECONDITION, LAST_ADMIN) if no admin certificate would be left.

Examples:
  edgeplane cert issue --role viewer --name alice --out ./alice
  edgeplane cert list
  edgeplane cert revoke alice --reason "left the team"`,
  arguments: ['issue', 'list', 'revoke'],
  options: {
    role: { type: 'string', value: 'ROLE', description: 'viewer, operator or admin', choices: ROLES },
    name: { type: 'string', value: 'NAME', description: 'who the certificate is for (an RFC 1123 label)' },
    out: { type: 'string', value: 'DIR', description: 'where to write the key, certificate and CA' },
    lifetime: { type: 'string', value: 'DURATION', description: 'validity (default 90 days, at most a year), e.g. 720h' },
    all: { type: 'boolean', description: 'list: include expired certificates' },
    reason: { type: 'string', value: 'TEXT', description: 'revoke: recorded with the revocation' },
  },
  async run(ctx: CommandContext, positionals: string[], flags: Flags): Promise<ExitCodeValue> {
    if (positionals[0] === 'list' && positionals.length === 1) {
      const res = await ctx.api().listCertificates(flags.boolean('all'));
      const rows = res.certificates.map((c) => [c.serialNumber, c.role, c.name, c.notAfter?.toISOString() ?? '', c.revoked ? `revoked ${c.revokedAt?.toISOString() ?? ''} by ${c.revokedBy}` : 'valid', c.issuedBy]);
      ctx.io.stdout.write(renderTable(['SERIAL', 'ROLE', 'NAME', 'NOT-AFTER', 'STATUS', 'ISSUED-BY'], rows));
      return ExitCode.OK;
    }
    if (positionals[0] === 'revoke' && positionals.length === 2) {
      const arg = positionals[1]!;
      const res = await ctx.api().revokeCertificate(looksLikeSerial(arg) ? { serialNumber: arg } : { name: arg }, flags.string('reason') ?? '');
      for (const c of res.revoked) ctx.io.stdout.write(`certificate ${c.serialNumber} (${c.role || '?'}/${c.name || '?'}) revoked at ${c.revokedAt?.toISOString() ?? ''}\n`);
      return ExitCode.OK;
    }
    if (positionals[0] !== 'issue' || positionals.length !== 1) throw new UsageError(USAGE);
    const role = flags.choice('role', ROLES, 'viewer');
    if (!flags.string('role')) throw new UsageError('--role is required (viewer, operator or admin)');
    const name = flags.string('name');
    const out = flags.string('out');
    if (!name || !out) throw new UsageError('--name and --out are required');
    const lifetimeText = flags.string('lifetime');
    const lifetime = lifetimeText === undefined ? undefined : parseDurationMs(lifetimeText);
    if (lifetimeText !== undefined && (lifetime === undefined || lifetime <= 0)) throw new UsageError(`--lifetime: ${JSON.stringify(lifetimeText)} is not a duration like 720h`);
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
    const res = await ctx.api().issueCertificate(role, name, publicKey.export({ type: 'spki', format: 'der' }), lifetime);
    try {
      mkdirSync(out, { recursive: true, mode: 0o700 });
      const keyFile = join(out, `${name}-key.pem`);
      writeFileSync(keyFile, privateKey.export({ type: 'pkcs8', format: 'pem' }) as string, { mode: 0o600 });
      chmodSync(keyFile, 0o600);
      writeFileSync(join(out, `${name}.pem`), res.certificate);
      writeFileSync(join(out, 'ca.pem'), res.caCertificate);
    } catch (cause) {
      throw new InputError(`write ${out}: ${(cause as Error).message}`, { cause });
    }
    ctx.io.stdout.write(`${role}/${name}: ${join(out, `${name}.pem`)} (key ${join(out, `${name}-key.pem`)}, CA ${join(out, 'ca.pem')}), valid until ${res.notAfter?.toISOString() ?? ''}, serial ${res.serialNumber}\n`);
    return ExitCode.OK;
  },
};
