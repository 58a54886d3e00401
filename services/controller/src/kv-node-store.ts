import type { KV } from '@nats-io/kv';
import { Node, encodeBytes } from '@edgeplane/proto';
import type { NodeStoreBackend } from './node-registry.js';

/** Keeps the node registry in a NATS JetStream key-value bucket, one key per node. */
export class KvNodeStore implements NodeStoreBackend {
  #kv: KV;

  constructor(kv: KV) {
    this.#kv = kv;
  }

  async load(): Promise<Node[]> {
    const nodes: Node[] = [];
    for await (const key of await this.#kv.keys()) {
      const e = await this.#kv.get(key);
      if (e && e.operation === 'PUT' && e.value.length > 0) nodes.push(Node.decode(e.value));
    }
    return nodes;
  }

  async save(node: Node): Promise<void> {
    await this.#kv.put(node.name, encodeBytes(Node, node));
  }
}
