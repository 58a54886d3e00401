import type { Command } from './command.js';
import { applyCommand } from './commands/apply.js';
import { blockCommand, unblockCommand } from './commands/block.js';
import { completionCommand } from './commands/completion.js';
import { deleteCommand } from './commands/delete.js';
import { describeCommand } from './commands/describe.js';
import { diffCommand } from './commands/diff.js';
import { getCommand } from './commands/get.js';
import { resetHistoryCommand } from './commands/reset-history.js';
import { rolloutCommand } from './commands/rollout.js';
import { certCommand } from './commands/cert.js';
import { conntrackCommand } from './commands/conntrack.js';
import { nodeCommand } from './commands/node.js';
import { tokenCommand } from './commands/token.js';

/**
 * The command table, in the order help lists it. A new subcommand (e.g. `rollout status`) is
 * a Command in commands/ and one entry here; help, flag checks and completion follow.
 */
export const COMMANDS: readonly Command[] = [applyCommand, diffCommand, getCommand, describeCommand, deleteCommand, rolloutCommand, blockCommand, unblockCommand, conntrackCommand, tokenCommand, nodeCommand, certCommand, resetHistoryCommand, completionCommand(() => COMMANDS)];
