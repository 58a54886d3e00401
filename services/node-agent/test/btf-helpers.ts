// Reads the BTF clang wrote into a BPF object (`bpftool -j btf dump file X format raw`), so a
// test can compare a libbpf-ts codec with the C struct it describes (datapath-layout.test.ts,
// edgeplane.bpf.o).
import { execFileSync } from 'node:child_process';
import type { StructField } from 'libbpf-ts';

interface BtfType {
  id: number;
  kind: string;
  name: string;
  size?: number;
  type_id?: number;
  nr_elems?: number;
  members?: { name: string; type_id: number; bits_offset: number; bitfield_size?: number }[];
}

/** The structs of one object's BTF. */
export interface ObjectBtf {
  /** sizeof(struct name); throws when the object has no such struct. */
  structSize(name: string): number | undefined;
  /**
   * The struct's members as a codec lists its fields: name in camelCase, byte offset, size.
   * Throws when the object has no such struct or a member is a bitfield (no codec has those).
   */
  structFields(name: string): StructField[];
}

const camel = (name: string): string => name.replace(/_([a-z])/g, (_, letter: string) => letter.toUpperCase());

/** Reads `path`'s BTF with bpftool (needed by the build too). */
export function readObjectBtf(path: string): ObjectBtf {
  const btf = new Map<number, BtfType>();
  for (const type of (JSON.parse(execFileSync('bpftool', ['-j', 'btf', 'dump', 'file', path, 'format', 'raw'], { encoding: 'utf8' })) as { types: BtfType[] }).types) btf.set(type.id, type);
  const typeSize = (id: number): number => {
    const type = btf.get(id);
    if (type === undefined) throw new Error(`BTF type ${id} missing`);
    if (type.kind === 'TYPEDEF' || type.kind === 'CONST' || type.kind === 'VOLATILE' || type.kind === 'RESTRICT') return typeSize(type.type_id as number);
    if (type.kind === 'ARRAY') return (type.nr_elems as number) * typeSize(type.type_id as number);
    if (type.size === undefined) throw new Error(`BTF type ${id} (${type.kind}) has no size`);
    return type.size;
  };
  const struct = (name: string): BtfType => {
    const found = [...btf.values()].find((type) => type.kind === 'STRUCT' && type.name === name);
    if (found === undefined) throw new Error(`struct ${name} is not in the BTF of ${path}`);
    return found;
  };
  return {
    structSize: (name) => struct(name).size,
    structFields: (name) =>
      (struct(name).members ?? []).map((member) => {
        if ((member.bitfield_size ?? 0) !== 0) throw new Error(`struct ${name}.${member.name} is a bitfield`);
        return { name: camel(member.name), offset: member.bits_offset / 8, size: typeSize(member.type_id) };
      }),
  };
}
