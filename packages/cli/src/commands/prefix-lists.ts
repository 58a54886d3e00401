// `get prefixlists` and `describe prefixlist`: prefix lists (BlocklistService) as a table, as
// manifests (-o yaml|json, read back by apply -f), or in detail.
import { PrefixListUse, type PrefixList } from '@edgeplane/proto';
import type { CommandContext, Flags } from '../command.js';
import { CliError } from '../errors.js';
import { ExitCode, type ExitCodeValue } from '../exit-codes.js';
import { reportError } from '../report.js';
import { listOf, toJson, toYaml, type Plain } from '../resource-format.js';

/** The words that name prefix lists in get and describe. */
export const PREFIX_LIST_WORDS = new Set(['prefixlists', 'prefixlist', 'pl']);

const useName = (use: PrefixListUse | undefined): string => (use === PrefixListUse.PREFIX_LIST_USE_DENY_SOURCE ? 'deny_source' : 'none');

function selectorText(list: PrefixList): string {
  const sel = list.spec?.nodeSelector;
  const parts = [...Object.entries(sel?.matchLabels ?? {}).map(([k, v]) => `${k}=${v}`), ...(sel?.matchExpressions.length ? [`(+${sel.matchExpressions.length} expressions)`] : [])];
  return parts.length ? parts.join(',') : '<all nodes>';
}

/** A list as the manifest apply -f reads (prefixes inline). */
function toManifest(list: PrefixList): Plain {
  const spec: Record<string, unknown> = { use: useName(list.spec?.use) };
  if (list.spec?.nodeSelector) spec.nodeSelector = { matchLabels: list.spec.nodeSelector.matchLabels };
  if (list.spec?.description) spec.description = list.spec.description;
  spec.prefixes = list.spec?.prefixes ?? [];
  const metadata: Record<string, unknown> = { name: list.metadata?.name ?? '' };
  if (Object.keys(list.metadata?.labels ?? {}).length) metadata.labels = list.metadata!.labels;
  metadata.resourceVersion = String(list.metadata?.resourceVersion ?? 0n);
  return { apiVersion: 'edgeplane.io/v1', kind: 'PrefixList', metadata, spec } as Plain;
}

/** `get prefixlists [NAME...] [-o json|yaml|name]`. */
export async function getPrefixLists(ctx: CommandContext, names: string[], flags: Flags): Promise<ExitCodeValue> {
  const output = flags.choice('output', ['table', 'wide', 'json', 'yaml', 'name'], 'table');
  const api = ctx.api();
  let code: ExitCodeValue = ExitCode.OK;
  const rows: { list: PrefixList; count: number }[] = [];
  if (names.length === 0) {
    const all = await api.listPrefixLists();
    all.prefixLists.forEach((list, i) => rows.push({ list, count: all.prefixCounts[i] ?? 0 }));
  }
  for (const name of names) {
    // Prefixes only for a manifest: a table needs the count.
    const got = await api.getPrefixList(name, output !== 'json' && output !== 'yaml');
    if (!got?.prefixList) {
      reportError(ctx.io, new CliError(`prefixlist ${JSON.stringify(name)} not found`));
      code = ExitCode.ERROR;
    } else rows.push({ list: got.prefixList, count: got.prefixCount });
  }
  if (output === 'json' || output === 'yaml') {
    const items = rows.map((r) => toManifest(r.list));
    const body = names.length === 1 && items.length === 1 ? items[0]! : listOf(items);
    ctx.io.stdout.write(output === 'json' ? toJson(body) : toYaml(body));
  } else if (output === 'name') {
    for (const r of rows) ctx.io.stdout.write(`prefixlist/${r.list.metadata?.name}\n`);
  } else if (rows.length === 0) {
    if (names.length === 0) ctx.io.stderr.write('No resources found.\n');
  } else {
    const table = [['NAME', 'USE', 'PREFIXES', 'SELECTOR', 'VERSION'], ...rows.map((r) => [r.list.metadata?.name ?? '', useName(r.list.spec?.use), String(r.count), selectorText(r.list), String(r.list.metadata?.resourceVersion ?? 0n)])];
    const widths = table[0]!.map((_, c) => Math.max(...table.map((row) => row[c]!.length)));
    ctx.io.stdout.write(table.map((row) => row.map((cell, c) => (c === row.length - 1 ? cell : cell.padEnd(widths[c]! + 3))).join('')).join('\n') + '\n');
  }
  return code;
}

/** `describe prefixlist NAME...`: metadata, use, selector, count and the first prefixes. */
export async function describePrefixLists(ctx: CommandContext, names: string[]): Promise<ExitCodeValue> {
  const api = ctx.api();
  let code: ExitCodeValue = ExitCode.OK;
  const targets = names.length ? names : (await api.listPrefixLists()).prefixLists.map((l) => l.metadata?.name ?? '');
  const blocks: string[] = [];
  for (const name of targets) {
    const got = await api.getPrefixList(name, false);
    if (!got?.prefixList) {
      reportError(ctx.io, new CliError(`prefixlist ${JSON.stringify(name)} not found`));
      code = ExitCode.ERROR;
      continue;
    }
    const list = got.prefixList;
    const shown = (list.spec?.prefixes ?? []).slice(0, 20);
    blocks.push(
      [
        `Name:         ${name}`,
        `Use:          ${useName(list.spec?.use)}`,
        `Selector:     ${selectorText(list)}`,
        `Description:  ${list.spec?.description || '<none>'}`,
        `Prefixes:     ${got.prefixCount}`,
        `Version:      ${list.metadata?.resourceVersion ?? 0n} (created at revision ${list.metadata?.createRevision ?? 0n})`,
        `Updated:      ${list.metadata?.updateTime?.toISOString() ?? '<unknown>'}`,
        `First prefixes:`,
        ...shown.map((p) => `  ${p}`),
        ...(got.prefixCount > shown.length ? [`  ... and ${got.prefixCount - shown.length} more`] : []),
      ].join('\n') + '\n',
    );
  }
  ctx.io.stdout.write(blocks.join('\n'));
  return code;
}
