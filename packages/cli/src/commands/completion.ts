import type { Command, CommandContext, Flags, OptionSpec } from '../command.js';
import { UsageError } from '../errors.js';
import { ExitCode, type ExitCodeValue } from '../exit-codes.js';
import { GLOBAL_OPTIONS } from '../global-options.js';
import { KIND_ALIASES } from '../resource-kind.js';

function flagWords(options: Readonly<Record<string, OptionSpec>>): string[] {
  return Object.entries(options).flatMap(([name, o]) => [`--${name}`, ...(o.short ? [`-${o.short}`] : [])]);
}

/**
 * Returns the bash completion script for a command table: commands, their flags and flag
 * values, resource kinds, and policy, service and node names (asked of the controller with
 * `get -o name`).
 */
export function bashCompletion(commands: readonly Command[]): string {
  const cases = commands
    .map((c) => {
      const words = [...(c.arguments ?? []), ...flagWords(c.options), ...flagWords(GLOBAL_OPTIONS)].join(' ');
      return `    ${[c.name, ...(c.aliases ?? [])].join('|')}) words="${words}" ;;`;
    })
    .join('\n');
  const choices = Object.entries({ ...GLOBAL_OPTIONS, ...Object.assign({}, ...commands.map((c) => c.options)) } as Record<string, OptionSpec>)
    .filter(([, o]) => o.choices)
    .map(([name, o]) => `    --${name}${o.short ? `|-${o.short}` : ''}) COMPREPLY=($(compgen -W "${o.choices!.join(' ')}" -- "$cur")); return ;;`)
    .join('\n');
  return `# bash completion for edgeplane. Load with: source <(edgeplane completion bash)
_edgeplane() {
  local cur prev cmd words i
  cur="\${COMP_WORDS[COMP_CWORD]}"
  prev="\${COMP_WORDS[COMP_CWORD-1]}"
  case "$prev" in
${choices}
    -f|--filename|--tls-ca|--tls-cert|--tls-key) COMPREPLY=($(compgen -f -- "$cur")); return ;;
  esac
  cmd=""
  for ((i = 1; i < COMP_CWORD; i++)); do
    case "\${COMP_WORDS[i]}" in -*) ;; *) cmd="\${COMP_WORDS[i]}"; break ;; esac
  done
  if [[ -z "$cmd" ]]; then
    COMPREPLY=($(compgen -W "${commands.flatMap((c) => [c.name]).join(' ')} help" -- "$cur"))
    return
  fi
  case "$prev" in
    ${Object.keys(KIND_ALIASES).join('|')})
      COMPREPLY=($(compgen -W "$(edgeplane get "$prev" -o name 2>/dev/null | sed 's|.*/||')" -- "$cur"))
      return ;;
  esac
  case "$cmd" in
${cases}
    *) words="" ;;
  esac
  COMPREPLY=($(compgen -W "$words" -- "$cur"))
}
complete -F _edgeplane edgeplane
`;
}

/** Returns the zsh completion script: the bash one through zsh's bashcompinit. */
export function zshCompletion(commands: readonly Command[]): string {
  return `#compdef edgeplane
# zsh completion for edgeplane. Load with: source <(edgeplane completion zsh)
autoload -U +X compinit && compinit
autoload -U +X bashcompinit && bashcompinit
${bashCompletion(commands).split('\n').slice(1).join('\n')}`;
}

/** `edgeplane completion bash|zsh`; takes the table lazily because the table contains it. */
export function completionCommand(commands: () => readonly Command[]): Command {
  return {
    name: 'completion',
    summary: 'Print a shell completion script (bash or zsh)',
    usage: ['completion bash|zsh'],
    details: `Examples:
  source <(edgeplane completion bash)
  edgeplane completion zsh > "\${fpath[1]}/_edgeplane"`,
    arguments: ['bash', 'zsh'],
    options: {},
    async run(ctx: CommandContext, positionals: string[], _flags: Flags): Promise<ExitCodeValue> {
      const shell = positionals[0];
      if (positionals.length !== 1 || (shell !== 'bash' && shell !== 'zsh')) throw new UsageError('completion takes one argument: bash or zsh');
      ctx.io.stdout.write(shell === 'bash' ? bashCompletion(commands()) : zshCompletion(commands()));
      return ExitCode.OK;
    },
  };
}
