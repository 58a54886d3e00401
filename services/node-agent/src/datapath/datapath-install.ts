// Installing the datapath object into a pin directory that may already hold an older one, the
// way Cilium migrates its bpffs: maps whose definition is unchanged are handed to the new
// object (bpf_map__reuse_fd), so its programs read the very tables that are live; maps that are
// new or changed are created beside the old ones and filled before anything switches; the new
// programs are pinned while the previous ones stay pinned under `-prev` until every hook has
// been switched. The caller (EbpfDatapath.open) then switches the hooks, writes the layout
// marker and drops the `-prev` pins. bpf/README.md, "Upgrades and the pinned layout", says
// what a crash at each step leaves and how the next start finishes the job.
import { existsSync, renameSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { BpfMap, loadObject, Program, type BpfObject, type MapShape, type MapSpec, type ObjectSpec } from 'libbpf-ts';
import { DatapathError } from './errors.js';
import { LAYOUT_MARKER, NEXT_SUFFIX, pinReplacing, PREVIOUS_SUFFIX } from './pin-layout.js';

/** A step of an install, reported as it completes (the agent logs them; tests stop at them). */
export type InstallStep = 'loaded' | 'migrated' | 'maps-pinned' | 'programs-pinned' | 'switched' | 'marked';

/** Options of installObject(). */
export interface InstallOptions {
  /** The bpffs directory of this datapath. */
  pinRoot: string;
  /** The programs to pin, by name. */
  programNames: readonly string[];
  /** The maps to pin (and to reuse when an identical one is pinned), by name. */
  mapNames: readonly string[];
  /** max_entries overrides of the named maps (before they are compared and created). */
  mapMaxEntries: Record<string, number>;
  /** Called after each step. */
  onStep?: ((step: InstallStep) => void) | undefined;
  /**
   * Maps whose elements change layout while their shape stays (same type and sizes): each is
   * migrated (created beside the pinned one and filled through its conversion) even when a
   * reuse would be possible. A conversion must be idempotent, since an install that stopped
   * after pinning the converted map converts it again.
   */
  convertMaps?: Readonly<Record<string, ElementConversion>> | undefined;
}

/** Converts one element of a pinned map into the object's layout. @returns the new key and value. */
export type ElementConversion = (key: Uint8Array, value: Uint8Array) => { key: Uint8Array; value: Uint8Array };

/** What an install found and did. */
export interface InstallReport {
  /** Maps handed over as they were (same map id, same contents). */
  readonly reusedMaps: readonly string[];
  /** Maps that did not exist before, created empty. */
  readonly createdMaps: readonly string[];
  /** Maps whose definition changed: created beside the old one and filled from it. */
  readonly migratedMaps: readonly string[];
  /**
   * Ids of the programs this install supersedes, by program name: the ones pinned before it
   * (under their name or `-prev`). A hook holding one of them is ours to switch.
   */
  readonly previousPrograms: ReadonlyMap<number, string>;
  /**
   * Kernel ids of the pinned maps that were migrated, by name: the superseded programs keep
   * writing them until their hooks are switched (the caller may copy what they added since).
   */
  readonly previousMaps: ReadonlyMap<string, number>;
}

/**
 * Loads `spec` into the kernel for the pin directory `options.pinRoot`, reusing every pinned
 * map of `options.mapNames` whose definition equals the object's, creating and filling the
 * others, and pins the maps and programs (the previous programs move to `name-prev`). It
 * attaches nothing and writes no marker: until the caller has switched the hooks, whatever
 * they hold keeps enforcing. Every step can be repeated: an install that stopped part-way is
 * finished by running it again.
 * @returns what was reused, created and migrated, and the ids of the superseded programs.
 * @throws DatapathError, with the pinned datapath unchanged when it fails before pinning: a
 * map changed in a way no migration covers (key or value layout), a verifier rejection, or a
 * failed pin (then the maps pinned so far are the new ones, which the next install reuses).
 */
export async function installObject(spec: ObjectSpec, options: InstallOptions): Promise<InstallReport> {
  const { pinRoot } = options;
  const pin = (name: string): string => join(pinRoot, name);
  const held: { close(): void }[] = [];
  const reusedMaps: string[] = [];
  const createdMaps: string[] = [];
  const migratedMaps: string[] = [];
  const previousPrograms = new Map<number, string>();
  const previousMaps = new Map<string, number>();
  let object: BpfObject | undefined;
  try {
    for (const name of options.programNames) {
      for (const path of [pin(name), pin(name + PREVIOUS_SUFFIX)]) {
        if (!existsSync(path)) continue;
        const program = Program.openPinned(path);
        held.push(program);
        previousPrograms.set(program.id, name);
      }
    }
    // Sort the pinned maps into reused (identical) and migrated (changed); the rest are new.
    const replacements: Record<string, BpfMap> = {};
    const migrations: { name: string; old: BpfMap }[] = [];
    for (const name of options.mapNames) {
      const declared = spec.maps.get(name);
      // An object without one of our maps fails when it is pinned, after the load: a verifier
      // rejection of a wrong object surfaces as such.
      if (declared === undefined || !existsSync(pin(name))) {
        createdMaps.push(name);
        continue;
      }
      const old = BpfMap.openPinned(pin(name));
      held.push(old);
      const want = { ...declared, maxEntries: options.mapMaxEntries[name] ?? declared.maxEntries };
      if (options.convertMaps?.[name] === undefined && sameShape(old, want) && innerMapsFit(old, declared)) {
        replacements[name] = old;
        reusedMaps.push(name);
      } else {
        migrations.push({ name, old });
        migratedMaps.push(name);
        previousMaps.set(name, old.id);
      }
    }
    object = await loadObject(spec, { mapReplacements: replacements, mapMaxEntries: options.mapMaxEntries });
    options.onStep?.('loaded');

    for (const { name, old } of migrations) copyMap(old, object.map(name), spec.maps.get(name) as MapSpec, options.convertMaps?.[name]);
    options.onStep?.('migrated');

    // New and migrated maps go in before the programs that use them: a crash from here on
    // leaves them pinned, and the next install reuses them (contents included).
    for (const name of [...createdMaps, ...migratedMaps]) pinReplacing(object.map(name), pinRoot, name);
    options.onStep?.('maps-pinned');

    for (const name of options.programNames) {
      // Keep the first superseded program pinned as name-prev until the hooks are switched; a
      // program pinned at name by an install that stopped is superseded too (its id is known).
      if (existsSync(pin(name))) {
        if (existsSync(pin(name + PREVIOUS_SUFFIX))) unlinkSync(pin(name));
        else renameSync(pin(name), pin(name + PREVIOUS_SUFFIX));
      }
      pinReplacing(object.program(name), pinRoot, name);
    }
    options.onStep?.('programs-pinned');
    return { reusedMaps, createdMaps, migratedMaps, previousPrograms, previousMaps };
  } catch (cause) {
    for (const name of [...options.programNames, ...options.mapNames, LAYOUT_MARKER]) {
      if (existsSync(pin(name + NEXT_SUFFIX))) unlinkSync(pin(name + NEXT_SUFFIX));
    }
    if (cause instanceof DatapathError) throw cause;
    throw new DatapathError(`install datapath object=${spec.path} pinRoot=${pinRoot}`, { cause });
  } finally {
    object?.close();
    for (const value of held) value.close();
  }
}

/**
 * Unpins what an install kept for a crash: the superseded programs (`-prev`) and staged pins
 * (`-next`). Call once every hook holds the new programs.
 * @throws the fs error.
 */
export function dropPreviousPins(pinRoot: string, names: readonly string[]): void {
  for (const name of names) {
    for (const suffix of [PREVIOUS_SUFFIX, NEXT_SUFFIX]) {
      const path = join(pinRoot, name + suffix);
      if (existsSync(path)) unlinkSync(path);
    }
  }
}

/** Elements read and written per batch syscall by a converting migration. */
const COPY_CHUNK = 8192;

/** What libbpf compares before it reuses a pinned map (map_is_reuse_compat), plus the type name. */
function sameShape(a: MapShape, b: MapShape): boolean {
  return a.type === b.type && a.keySize === b.keySize && a.valueSize === b.valueSize && a.maxEntries === b.maxEntries && a.flags === b.flags;
}

// A reused outer map keeps the inner-map definition it was created with, and the new programs
// are verified against that one. bpf_map_info does not show it, but the inner maps installed in
// it do: they must have the shape the object declares (max_entries aside, which inner maps of
// these types may choose per map).
function innerMapsFit(outer: BpfMap, declared: MapSpec): boolean {
  if (declared.innerMap === undefined) return true;
  const inner = declared.innerMap;
  for (const key of outer.keys()) {
    const map = outer.getInnerMap(key);
    if (map === undefined) continue;
    try {
      if (!sameShape({ ...map, maxEntries: 0 }, { ...inner, maxEntries: 0 })) return false;
    } finally {
      map.close();
    }
  }
  return true;
}

// Fills `to` (the object's new map) with every element of `from` (the pinned one), through
// `convert` when given. Only a change of size or flags is migrated generically; a change of the
// key or value layout needs a conversion written for it (convertMaps), and refuses the upgrade
// until there is one.
function copyMap(from: BpfMap, to: BpfMap, declared: MapSpec, convert: ElementConversion | undefined): void {
  const operation = `migrate map=${declared.name}`;
  // A conversion may change the value's size (layout 4 grew ep_ct_entry); it makes values of the new one.
  if (from.type !== to.type || from.keySize !== to.keySize || (convert === undefined && from.valueSize !== to.valueSize)) {
    const describe = (m: MapShape): string => `${m.type} key=${m.keySize} value=${m.valueSize} entries=${m.maxEntries}`;
    throw new DatapathError(
      `${operation}: the pinned ${describe(from)} became ${describe(to)}, and no migration converts its elements; the pinned datapath keeps running unchanged (to start over: --reset-datapath, see bpf/README.md)`,
    );
  }
  try {
    if (convert !== undefined) {
      for (const { count, keys, values } of from.getBatches(COPY_CHUNK)) {
        const outKeys: Uint8Array[] = [];
        const outValues: Uint8Array[] = [];
        for (let i = 0; i < count; i++) {
          const element = convert(keys.subarray(i * from.keySize, (i + 1) * from.keySize), values.subarray(i * from.valueSize, (i + 1) * from.valueSize));
          outKeys.push(element.key);
          outValues.push(element.value);
        }
        to.setBatch(outKeys, outValues);
      }
    } else if (from.perCpu) {
      for (const key of from.keys()) {
        const values = from.getPerCpu(key);
        if (values !== undefined) to.setPerCpu(key, values);
      }
    } else if (declared.innerMap !== undefined) {
      for (const key of from.keys()) {
        const inner = from.getInnerMap(key);
        if (inner === undefined) continue;
        try {
          to.setInnerMap(key, inner);
        } finally {
          inner.close();
        }
      }
    } else {
      for (const [key, value] of from.entries()) to.set(key, value);
    }
  } catch (cause) {
    throw new DatapathError(`${operation} from=${from.maxEntries} to=${to.maxEntries} entries`, { cause });
  }
}
