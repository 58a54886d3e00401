// The kernel's ep_ct4 (the IPv4 flow table, layout 6) as tests read and write it: through the
// table's placement in ct4-table.ts, so a line the kernel put elsewhere than the model would is
// not found (the differential test relies on that).
import { join } from 'node:path';
import { BpfMap, type CodecValue } from 'libbpf-ts';
import { ctKeyOfFlow, originalTuple, type CtKey } from '../src/datapath/conntrack-key.js';
import { keyId } from '../src/datapath/conntrack-model.js';
import { ct4Entry, ct4Line, ct4Place, CT4_EMPTY, CT4_LIVE, CT4_PROBES } from '../src/datapath/ct4-table.js';
import { epCt4Cold, epCt4Slot, type epCtEntry } from '../src/datapath/table-codecs.js';

type KernelEntry = CodecValue<typeof epCtEntry>;

/** The kernel's ep_ct4 and ep_ct4_cold, read and written through the table's placement (ct4-table.ts). */
export class KernelCt4 {
  constructor(
    readonly lines: BpfMap,
    readonly cold: BpfMap,
  ) {}

  /** Opens the pinned ep_ct4 and ep_ct4_cold of the datapath at `pinRoot` (close() them). */
  static open(pinRoot: string): KernelCt4 {
    return new KernelCt4(BpfMap.openPinned(join(pinRoot, 'ep_ct4')), BpfMap.openPinned(join(pinRoot, 'ep_ct4_cold')));
  }

  close(): void {
    this.lines.close();
    this.cold.close();
  }

  /** Every live line (expired ones too), keyed by the flow's original direction. */
  read(): { key: CtKey; entry: KernelEntry; index: number }[] {
    const out: { key: CtKey; entry: KernelEntry; index: number }[] = [];
    for (let index = 0; index < this.lines.maxEntries; index++) {
      const found = this.#at(index);
      if (found !== undefined) out.push({ ...found, index });
    }
    return out;
  }

  /** The line of the flow whose table key is `tableKey` (ep_ct4_find), or undefined. */
  find(tableKey: CtKey): { key: CtKey; entry: KernelEntry; index: number } | undefined {
    const { home, busy } = ct4Place(tableKey, this.lines.maxEntries);
    for (let i = 0; i < CT4_PROBES; i++) {
      const index = (home + i) & (this.lines.maxEntries - 1);
      const line = epCt4Slot.decode(this.lines.get(u32Key(index)) as Uint8Array);
      if (line.tag === CT4_EMPTY) return undefined;
      if (line.tag !== ((busy | CT4_LIVE) >>> 0)) continue;
      const found = this.#at(index);
      if (found !== undefined && keyId(ctKeyOfFlow(found.key).key) === keyId(tableKey)) return { ...found, index };
    }
    return undefined;
  }

  write(index: number, original: CtKey, entry: KernelEntry): void {
    const key = ctKeyOfFlow(original).key;
    const { line, cold } = ct4Line(key, entry, ct4Place(key, this.lines.maxEntries).busy);
    this.lines.set(u32Key(index), line);
    this.cold.set(u32Key(index), cold);
  }

  /** Every slot EMPTY. */
  clear(): void {
    const zero = new Uint8Array(epCt4Slot.size);
    for (let index = 0; index < this.lines.maxEntries; index++) this.lines.set(u32Key(index), zero);
  }

  #at(index: number): { key: CtKey; entry: KernelEntry } | undefined {
    const line = ct4Entry(epCt4Slot.decode(this.lines.get(u32Key(index)) as Uint8Array), epCt4Cold.decode(this.cold.get(u32Key(index)) as Uint8Array));
    return line === undefined ? undefined : { key: originalTuple(line.key, line.entry.flags), entry: line.entry };
  }
}

export function u32Key(index: number): Uint8Array {
  const key = new Uint8Array(4);
  new DataView(key.buffer).setUint32(0, index, true);
  return key;
}

