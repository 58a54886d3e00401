// The flow hash in C (bpf/include/ep_hash.h) and in TypeScript (flow-hash.ts) are one function:
// bpf/fixtures/flow_hash.bpf.c parses a frame with the datapath's parser and returns
// ep_flow_hash() / ep_client_hash() of it; BPF_PROG_TEST_RUN runs it in the kernel over
// thousands of generated IPv4 and IPv6 TCP/UDP tuples, and each result must equal the TypeScript
// hash of the tuple the frame was built from. Needs root (BPF); touches no interface.
// Reproduce a failure with EDGEPLANE_SEED=<seed it prints>.
import { fileURLToPath } from 'node:url';
import test from 'ava';
import { loadObject, loadObjectSpec, type BpfObject } from 'libbpf-ts';
import { formatAddress } from '@edgeplane/proto';
import { clientHash, flowHash, type FlowTuple } from '../src/datapath/flow-hash.js';
import { buildFrame } from '../src/datapath/packet.js';
import { prng, seedFromEnv } from './datapath-helpers.js';

const objectPath = fileURLToPath(new URL('../../../bpf/build/fixtures/flow_hash.bpf.o', import.meta.url));
let object: BpfObject | undefined;

test.before(async () => {
  object = await loadObject(await loadObjectSpec(objectPath));
});
test.after.always(() => object?.close());

// A tuple with random bytes everywhere a hash could go wrong (every address byte, both ports'
// high and low bytes), half IPv4 and half IPv6, TCP or UDP.
function randomTuple(rng: () => number, family: 4 | 6 = rng() < 0.5 ? 4 : 6): FlowTuple {
  const bytes = (): Uint8Array => Uint8Array.from({ length: family === 4 ? 4 : 16 }, () => Math.floor(rng() * 256));
  return {
    family,
    proto: rng() < 0.5 ? 6 : 17,
    src: bytes(),
    dst: bytes(),
    sport: Math.floor(rng() * 65536),
    dport: Math.floor(rng() * 65536),
  };
}

function frameOf(tuple: FlowTuple, vlans: readonly number[]): Uint8Array {
  return buildFrame({
    src: formatAddress(tuple.family, tuple.src),
    dst: formatAddress(tuple.family, tuple.dst),
    protocol: tuple.proto === 6 ? 'tcp' : 'udp',
    srcPort: tuple.sport,
    dstPort: tuple.dport,
    vlans,
  });
}

test('ep_flow_hash - the kernel and flowHash() agree on 8,000 random IPv4 and IPv6 tuples', (t) => {
  const program = (object as BpfObject).program('flow_hash');
  const seed = seedFromEnv();
  t.log(`seed ${seed} (EDGEPLANE_SEED=${seed} to reproduce)`);
  const rng = prng(seed);
  const families = { 4: 0, 6: 0 };
  for (let i = 0; i < 8000; i++) {
    const tuple = randomTuple(rng);
    families[tuple.family]++;
    const frame = frameOf(tuple, i % 5 === 0 ? [7] : []);
    const kernel = program.testRun({ data: frame }).retval >>> 0;
    if (kernel !== flowHash(tuple)) {
      t.fail(`seed ${seed} tuple ${i}: kernel ${kernel.toString(16)}, flowHash ${flowHash(tuple).toString(16)}\n${JSON.stringify({ ...tuple, src: [...tuple.src], dst: [...tuple.dst] })}`);
      return;
    }
  }
  t.true(families[4] > 3000 && families[6] > 3000);
});

test('ep_client_hash - the kernel and clientHash() agree, and it depends on the source address only', (t) => {
  const program = (object as BpfObject).program('client_hash');
  const seed = seedFromEnv();
  t.log(`seed ${seed} (EDGEPLANE_SEED=${seed} to reproduce)`);
  const rng = prng(seed);
  for (let i = 0; i < 4000; i++) {
    const tuple = randomTuple(rng);
    const kernel = program.testRun({ data: frameOf(tuple, []) }).retval >>> 0;
    if (kernel !== clientHash(tuple.family, tuple.src)) {
      t.fail(`seed ${seed} tuple ${i}: kernel ${kernel.toString(16)}, clientHash ${clientHash(tuple.family, tuple.src).toString(16)}`);
      return;
    }
    // Another destination, ports and protocol from the same client: the same hash.
    const other = { ...randomTuple(rng, tuple.family), src: tuple.src };
    if (program.testRun({ data: frameOf(other, []) }).retval >>> 0 !== kernel) {
      t.fail(`seed ${seed} tuple ${i}: another flow of the same client hashed differently`);
      return;
    }
  }
  t.pass();
});
