import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { fromBinary } from '@bufbuild/protobuf';
import { BinaryReader, WireType } from '@bufbuild/protobuf/wire';
import { FileDescriptorProtoSchema, type DescriptorProto, type EnumDescriptorProto } from '@bufbuild/protobuf/wkt';

/**
 * The file descriptor sets `npm run gen` writes with `buf build` (as protoc would compile the
 * files): every edgeplane .proto with the google/protobuf and google/rpc files it imports, and
 * gRPC's health service. What server reflection serves.
 */
export const DESCRIPTOR_SET_PATHS: readonly string[] = ['edgeplane.binpb', 'grpc-health.binpb'].map((f) => fileURLToPath(new URL(`../../gen/${f}`, import.meta.url)));

/** One compiled .proto file: its path, its imports and its FileDescriptorProto as buf wrote it. */
export interface DescriptorFile {
  name: string;
  dependencies: readonly string[];
  /** The serialized FileDescriptorProto, byte for byte from the set. */
  bytes: Uint8Array;
}

/**
 * The files of one or more FileDescriptorSets by path and by the fully-qualified names they
 * define (messages, enums, services, methods, extensions, nested ones included), as gRPC server
 * reflection answers `file_by_filename` and `file_containing_symbol`. Linear in the sets' size.
 */
export class DescriptorIndex {
  readonly #files = new Map<string, DescriptorFile>();
  readonly #symbols = new Map<string, DescriptorFile>();
  /** Fully-qualified service names, sorted. */
  readonly services: readonly string[];

  constructor(sets: readonly Uint8Array[]) {
    const services: string[] = [];
    for (const set of sets) {
      // FileDescriptorSet is `repeated FileDescriptorProto file = 1`: split it on the wire so
      // each file is served exactly as compiled, then decode each to index it.
      const reader = new BinaryReader(set);
      while (reader.pos < reader.len) {
        const [field, wire] = reader.tag();
        if (field !== 1 || wire !== WireType.LengthDelimited) {
          reader.skip(wire);
          continue;
        }
        const bytes = reader.bytes().slice();
        const fd = fromBinary(FileDescriptorProtoSchema, bytes);
        if (this.#files.has(fd.name)) continue;
        const file: DescriptorFile = { name: fd.name, dependencies: fd.dependency, bytes };
        this.#files.set(fd.name, file);
        const scope = fd.package ? `${fd.package}.` : '';
        const define = (name: string): void => void this.#symbols.set(name, file);
        const enums = (list: readonly EnumDescriptorProto[], prefix: string): void => list.forEach((e) => define(`${prefix}${e.name}`));
        const messages = (list: readonly DescriptorProto[], prefix: string): void => {
          for (const m of list) {
            const name = `${prefix}${m.name}`;
            define(name);
            messages(m.nestedType, `${name}.`);
            enums(m.enumType, `${name}.`);
            m.extension.forEach((x) => define(`${name}.${x.name}`));
          }
        };
        messages(fd.messageType, scope);
        enums(fd.enumType, scope);
        fd.extension.forEach((x) => define(`${scope}${x.name}`));
        for (const s of fd.service) {
          define(`${scope}${s.name}`);
          services.push(`${scope}${s.name}`);
          s.method.forEach((m) => define(`${scope}${s.name}.${m.name}`));
        }
      }
    }
    this.services = services.sort();
  }

  /** The index of the sets `npm run gen` wrote ({@link DESCRIPTOR_SET_PATHS}). */
  static load(paths: readonly string[] = DESCRIPTOR_SET_PATHS): DescriptorIndex {
    return new DescriptorIndex(paths.map((p) => readFileSync(p)));
  }

  /** The file at this path (`edgeplane/v1/policy.proto`), if any. */
  file(name: string): DescriptorFile | undefined {
    return this.#files.get(name);
  }

  /** The file defining this fully-qualified name (no leading dot), if any. */
  fileOfSymbol(symbol: string): DescriptorFile | undefined {
    return this.#symbols.get(symbol.startsWith('.') ? symbol.slice(1) : symbol);
  }

  /**
   * The file and every file it imports, transitively, each once and none in `sent` (which
   * grows): what a reflection answer carries so a client can build a descriptor pool.
   */
  withDependencies(file: DescriptorFile, sent: Set<string> = new Set()): DescriptorFile[] {
    const out: DescriptorFile[] = [];
    const stack = [file];
    while (stack.length > 0) {
      const f = stack.pop()!;
      if (sent.has(f.name)) continue;
      sent.add(f.name);
      out.push(f);
      for (const d of f.dependencies) {
        const dep = this.#files.get(d);
        if (dep && !sent.has(d)) stack.push(dep);
      }
    }
    return out;
  }
}
