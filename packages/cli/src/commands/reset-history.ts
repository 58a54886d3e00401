import { readFileSync } from 'node:fs';
import { privateKeyFromPem, signHistoryReset } from '@edgeplane/proto';
import type { Command, CommandContext, Flags } from '../command.js';
import { InputError, UsageError } from '../errors.js';
import { ExitCode, type ExitCodeValue } from '../exit-codes.js';

/**
 * `edgeplane reset-history`: signs a HistoryReset with the operator's reset key (on this
 * machine: the controller never holds it) and has the controller write it into the log.
 */
export const resetHistoryCommand: Command = {
  name: 'reset-history',
  summary: 'Let agents accept the log as it is now after they refused a rollback (admin)',
  usage: ['reset-history --reset-key FILE --fleet-id ID --epoch N --reason TEXT'],
  details: `Agents remember the newest log revision they verified and refuse a shorter or different
history (condition rollback-refused), e.g. after the NATS storage was lost or rolled back.
Once the log is known good, an admin signs a reset with an operator reset key the agents
trust (--reset-key on the agent) and a new epoch (above every earlier reset's); agents that
verify it rebuild their intent from the log as it is now. The controller only copies it into
the log: it cannot sign one. Needs the admin role.

Examples:
  edgeplane reset-history --reset-key ~/.edgeplane/reset-key.pem --fleet-id 3f0c... --epoch 2 --reason "nats volume restored from backup"`,
  options: {
    'reset-key': { type: 'string', value: 'FILE', description: 'the operator reset key (Ed25519 private key, PKCS#8 PEM)' },
    'fleet-id': { type: 'string', value: 'ID', description: "the fleet's id (the controller prints it as fleetId)" },
    epoch: { type: 'string', value: 'N', description: 'the reset epoch: above every earlier reset of this fleet' },
    reason: { type: 'string', value: 'TEXT', description: 'why (kept in the log)' },
  },
  async run(ctx: CommandContext, positionals: string[], flags: Flags): Promise<ExitCodeValue> {
    if (positionals.length > 0) throw new UsageError('reset-history takes no arguments');
    const keyFile = flags.string('reset-key');
    const fleetId = flags.string('fleet-id');
    const epochText = flags.string('epoch');
    const reason = flags.string('reason') ?? '';
    if (!keyFile || !fleetId || !epochText) throw new UsageError('--reset-key, --fleet-id and --epoch are required');
    if (!/^[1-9][0-9]{0,18}$/.test(epochText)) throw new UsageError(`--epoch ${JSON.stringify(epochText)}: a whole number from 1`);
    if (reason.length > 1024) throw new UsageError('--reason: at most 1024 characters');
    let key;
    try {
      key = privateKeyFromPem(readFileSync(keyFile, 'utf8'));
    } catch (cause) {
      throw new InputError(`--reset-key ${keyFile}: not a readable PEM private key`, { cause });
    }
    if (key.asymmetricKeyType !== 'ed25519') throw new InputError(`--reset-key ${keyFile}: an ${key.asymmetricKeyType} key, not ed25519`);
    const signed = signHistoryReset({ fleetId, epoch: BigInt(epochText), reason }, key);
    const res = await ctx.api().resetHistory(signed);
    ctx.io.stdout.write(`history reset epoch ${epochText} written (revision ${res.revision})\n`);
    return ExitCode.OK;
  },
};
