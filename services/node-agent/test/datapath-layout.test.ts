// The object's shape and byte layouts, checked against bpf/build/edgeplane.bpf.o itself (no
// interfaces, no kernel load): the programs and maps it must have, and every struct the agent
// encodes (table-codecs.ts, compile-tables.ts sizes) against the BTF clang wrote from the C
// headers. Needs bpftool, as the build does.
import { BLOCKLIST_SIZES } from '../src/datapath/blocklist.js';
import { HASH_BUCKET_BYTES, HASHED_MAP_FLAGS, PREFILTER_MAP_FLAGS, PREFILTER_VALUE_BYTES, PREFILTER_WORDS } from '../src/datapath/blocklist-hash.js';
import test from 'ava';
import { loadObjectSpec } from 'libbpf-ts';
import { sizes } from '../src/datapath/compile-tables.js';
import { CONNTRACK_STAT_NAMES } from '../src/datapath/conntrack.js';
import { LB_STAT_NAMES } from '../src/datapath/datapath.js';
import { DEFAULT_OBJECT_PATH } from '../src/datapath/ebpf-datapath.js';
import { MAX_SHADOW_NAME_BYTES, SHADOW_RING_SAMPLES } from '../src/datapath/shadow-tables.js';
import { LIST_REFS, LIST_SLOTS, LREF_SIZE } from '../src/datapath/list-tables.js';
import { tableCodecs } from '../src/datapath/table-codecs.js';
import { readObjectBtf } from './btf-helpers.js';

const btf = readObjectBtf(DEFAULT_OBJECT_PATH);

test('object - has the programs and maps the agent pins, with their shapes', async (t) => {
  const spec = await loadObjectSpec(DEFAULT_OBJECT_PATH);
  t.deepEqual(
    [...spec.programs.values()].map(({ name, section, type }) => ({ name, section, type })),
    [
      { name: 'edge_xdp', section: 'xdp', type: 'xdp' },
      { name: 'edge_tc', section: 'tc', type: 'sched_cls' },
      { name: 'edge_tc_egress', section: 'tc', type: 'sched_cls' },
      { name: 'ep_ct_sweep', section: 'syscall', type: 'syscall' },
      { name: 'ep_ct4_count', section: 'syscall', type: 'syscall' },
      { name: 'ep_blk_clock', section: 'syscall', type: 'syscall' },
    ],
  );
  const maps = Object.fromEntries([...spec.maps.values()].map(({ name, type, keySize, valueSize, maxEntries, flags, innerMap }) => [name, { type, keySize, valueSize, maxEntries, flags, inner: innerMap?.type }]));
  t.deepEqual(maps, {
    ep_lpm: { type: 'array_of_maps', keySize: 4, valueSize: 4, maxEntries: 2, flags: 0, inner: 'lpm_trie' },
    ep_cwords: { type: 'array_of_maps', keySize: 4, valueSize: 4, maxEntries: 2, flags: 0, inner: 'hash' },
    ep_wild: { type: 'array', keySize: 4, valueSize: sizes.bitvec, maxEntries: 18, flags: 0, inner: undefined },
    ep_rules: { type: 'array', keySize: 4, valueSize: sizes.rule, maxEntries: 131_074, flags: 0, inner: undefined },
    ep_counters: { type: 'percpu_array', keySize: 4, valueSize: sizes.counter, maxEntries: 131_074, flags: 0, inner: undefined },
    ep_active: { type: 'array', keySize: 4, valueSize: 4, maxEntries: 1, flags: 0, inner: undefined },
    ep_buckets: { type: 'lru_hash', keySize: 24, valueSize: 16, maxEntries: 262_144, flags: 0, inner: undefined },
    ep_stats: { type: 'percpu_array', keySize: 4, valueSize: sizes.counter, maxEntries: 4, flags: 0, inner: undefined },
    ep_meta: { type: 'array', keySize: 4, valueSize: tableCodecs.ep_meta.size, maxEntries: 2, flags: 0, inner: undefined },
    ep_carry: { type: 'hash', keySize: 4, valueSize: sizes.counter, maxEntries: 131_074, flags: 0, inner: undefined },
    // Small generations' prefixes to scan (bpf/README.md, "Small rule sets"): struct ep_scan per generation.
    ep_scan: { type: 'array', keySize: 4, valueSize: sizes.scan, maxEntries: 2, flags: 0, inner: undefined },
    ep_barrier: { type: 'array_of_maps', keySize: 4, valueSize: 4, maxEntries: 1, flags: 0, inner: 'array' },
    ep_scratch: { type: 'percpu_array', keySize: 4, valueSize: 856, maxEntries: 1, flags: 0, inner: undefined },
    ep_ct_new: { type: 'lru_hash', keySize: tableCodecs.ep_ct_key.size, valueSize: tableCodecs.ep_ct_entry.size, maxEntries: 65_536, flags: 0, inner: undefined },
    ep_ct: { type: 'hash', keySize: tableCodecs.ep_ct_key.size, valueSize: tableCodecs.ep_ct_entry.size, maxEntries: 262_144, flags: 0, inner: undefined },
    // Layout 6: the IPv4 flow table, one cache line a slot, and its cold half (sized at load: ct4Slots).
    ep_ct4: { type: 'array', keySize: 4, valueSize: 64, maxEntries: 262_144, flags: 0, inner: undefined },
    ep_ct4_cold: { type: 'array', keySize: 4, valueSize: tableCodecs.ep_ct4_cold.size, maxEntries: 262_144, flags: 0, inner: undefined },
    ep_ct_scratch: { type: 'percpu_array', keySize: 4, valueSize: tableCodecs.ep_ct_entry.size, maxEntries: 1, flags: 0, inner: undefined }, // ep_ct_create's entry, private
    ep_ct_cfg: { type: 'array', keySize: 4, valueSize: tableCodecs.ep_ct_cfg.size, maxEntries: 1, flags: 0, inner: undefined },
    ep_gen_cfg: { type: 'array', keySize: 4, valueSize: tableCodecs.ep_gen_cfg.size, maxEntries: 2, flags: 0, inner: undefined },
    ep_ct_stats: { type: 'percpu_array', keySize: 4, valueSize: sizes.counter, maxEntries: CONNTRACK_STAT_NAMES.length, flags: 0, inner: undefined },
    ep_ct_control: { type: 'hash', keySize: tableCodecs.ep_ct_control_key.size, valueSize: 4, maxEntries: 64, flags: 0, inner: undefined },
    ep_ct_control_ports: { type: 'array', keySize: 4, valueSize: 8, maxEntries: 1024, flags: 0, inner: undefined },
    // Layout 4 (bpf/LB.md): placeholders of 2 entries, sized at load from lbCapacity.
    ep_lb_vip: { type: 'hash', keySize: tableCodecs.ep_lb_vip_key.size, valueSize: tableCodecs.ep_lb_svc.size, maxEntries: 2, flags: 0, inner: undefined },
    ep_lb_slots: { type: 'array', keySize: 4, valueSize: tableCodecs.ep_lb_block.size, maxEntries: 2, flags: 0, inner: undefined },
    ep_lb_backends: { type: 'array', keySize: 4, valueSize: tableCodecs.ep_lb_backend.size, maxEntries: 2, flags: 0, inner: undefined },
    ep_lb_cfg: { type: 'array', keySize: 4, valueSize: tableCodecs.ep_lb_cfg.size, maxEntries: 1, flags: 0, inner: undefined },
    ep_lb_stats: { type: 'percpu_array', keySize: 4, valueSize: sizes.counter, maxEntries: LB_STAT_NAMES.length, flags: 0, inner: undefined },
    // Layout 5 (bpf/LB.md, "Forwarding modes"): per-CPU scratch of the DSR and full-NAT rewrites
    // and of a reverse entry being made, private to the programs (not pinned).
    ep_lb_xlat: { type: 'percpu_array', keySize: 4, valueSize: 256, maxEntries: 1, flags: 0, inner: undefined },
    ep_lb_alloc: { type: 'percpu_array', keySize: 4, valueSize: 200, maxEntries: 1, flags: 0, inner: undefined }, // key, entry and the probe loop's state
    // The source blocklist (bpf/README.md, "The blocklist"): per-family tries in a 2-slot switch of their own.
    ep_blk4: { type: 'array_of_maps', keySize: 4, valueSize: 4, maxEntries: 2, flags: 0, inner: 'lpm_trie' },
    ep_blk6: { type: 'array_of_maps', keySize: 4, valueSize: 4, maxEntries: 2, flags: 0, inner: 'lpm_trie' },
    // Its permanent IPv4 entries of the commonest lengths: a hashed set per slot, written through mmap.
    ep_blk4h: { type: 'array_of_maps', keySize: 4, valueSize: 4, maxEntries: 2, flags: 0, inner: 'array' },
    ep_blk4p: { type: 'array_of_maps', keySize: 4, valueSize: 4, maxEntries: 2, flags: 0, inner: 'array' },
    ep_blk_active: { type: 'array', keySize: 4, valueSize: 4, maxEntries: 1, flags: 0, inner: undefined },
    ep_blk_stats: { type: 'percpu_array', keySize: 4, valueSize: sizes.counter, maxEntries: 3, flags: 0, inner: undefined },
    ep_blk_clock_out: { type: 'array', keySize: 4, valueSize: 8, maxEntries: 1, flags: 0, inner: undefined },
    // Shadow classification (bpf/README.md, "Shadow classification"): the candidate's own tables, one slot of a generation's layouts.
    ep_shadow: { type: 'array', keySize: 4, valueSize: tableCodecs.ep_shadow_cfg.size, maxEntries: 1, flags: 0, inner: undefined },
    ep_shadow_lpm: { type: 'array_of_maps', keySize: 4, valueSize: 4, maxEntries: 1, flags: 0, inner: 'lpm_trie' },
    ep_shadow_cwords: { type: 'array_of_maps', keySize: 4, valueSize: 4, maxEntries: 1, flags: 0, inner: 'hash' },
    ep_shadow_wild: { type: 'array', keySize: 4, valueSize: sizes.bitvec, maxEntries: 9, flags: 0, inner: undefined },
    ep_shadow_rules: { type: 'array', keySize: 4, valueSize: sizes.rule, maxEntries: 65_537, flags: 0, inner: undefined },
    ep_shadow_counters: { type: 'percpu_array', keySize: 4, valueSize: sizes.counter, maxEntries: 65_537, flags: 0, inner: undefined },
    ep_shadow_stats: { type: 'percpu_array', keySize: 4, valueSize: sizes.counter, maxEntries: 4, flags: 0, inner: undefined },
    ep_shadow_slots: { type: 'array', keySize: 4, valueSize: tableCodecs.ep_shadow_slot.size, maxEntries: 65_536, flags: 0, inner: undefined },
    ep_shadow_member: { type: 'array', keySize: 4, valueSize: 2 * 8 * 1024, maxEntries: 1, flags: 0, inner: undefined },
    ep_shadow_samples: { type: 'percpu_array', keySize: 4, valueSize: tableCodecs.ep_shadow_sample.size, maxEntries: SHADOW_RING_SAMPLES, flags: 0, inner: undefined },
    // Prefix lists in rules (bpf/README.md, "Prefix lists in rules"): a trie pair per list slot, per generation and for the union which lists it names and their vectors.
    ep_lst4: { type: 'array_of_maps', keySize: 4, valueSize: 4, maxEntries: LIST_SLOTS, flags: 0, inner: 'lpm_trie' },
    ep_lst6: { type: 'array_of_maps', keySize: 4, valueSize: 4, maxEntries: LIST_SLOTS, flags: 0, inner: 'lpm_trie' },
    ep_lref: { type: 'array', keySize: 4, valueSize: LREF_SIZE, maxEntries: 2, flags: 0, inner: undefined },
    ep_lvec: { type: 'array', keySize: 4, valueSize: sizes.bitvec, maxEntries: 2 * 2 * LIST_REFS, flags: 0, inner: undefined },
    ep_shadow_lref: { type: 'array', keySize: 4, valueSize: LREF_SIZE, maxEntries: 1, flags: 0, inner: undefined },
    ep_shadow_lvec: { type: 'array', keySize: 4, valueSize: sizes.bitvec, maxEntries: 2 * LIST_REFS, flags: 0, inner: undefined },
  });
  t.deepEqual(spec.maps.get('ep_blk4')?.innerMap, { type: 'lpm_trie', keySize: BLOCKLIST_SIZES.key4, valueSize: BLOCKLIST_SIZES.value, maxEntries: 1, flags: 1 });
  t.deepEqual(spec.maps.get('ep_blk6')?.innerMap, { type: 'lpm_trie', keySize: BLOCKLIST_SIZES.key6, valueSize: BLOCKLIST_SIZES.value, maxEntries: 1, flags: 1 });
  t.deepEqual(spec.maps.get('ep_blk4h')?.innerMap, { type: 'array', keySize: 4, valueSize: HASH_BUCKET_BYTES, maxEntries: 1, flags: HASHED_MAP_FLAGS });
  // The prefilter's inner maps have the one size the agent creates them with (not BPF_F_INNER_MAP).
  t.deepEqual(spec.maps.get('ep_blk4p')?.innerMap, { type: 'array', keySize: 4, valueSize: PREFILTER_VALUE_BYTES, maxEntries: PREFILTER_WORDS, flags: PREFILTER_MAP_FLAGS });
  // A list's tries are written by the blocklist's code: the same templates.
  t.deepEqual(spec.maps.get('ep_lst4')?.innerMap, spec.maps.get('ep_blk4')?.innerMap);
  t.deepEqual(spec.maps.get('ep_lst6')?.innerMap, spec.maps.get('ep_blk6')?.innerMap);
  t.deepEqual(spec.maps.get('ep_lpm')?.innerMap, { type: 'lpm_trie', keySize: sizes.lpmKey, valueSize: sizes.classRef, maxEntries: 1, flags: 1 });
  t.deepEqual(spec.maps.get('ep_cwords')?.innerMap, { type: 'hash', keySize: sizes.wordKey, valueSize: sizes.word, maxEntries: 1, flags: 0 });
  // The candidate's inner maps are written by the same code as a generation's: same templates.
  t.deepEqual(spec.maps.get('ep_shadow_lpm')?.innerMap, spec.maps.get('ep_lpm')?.innerMap);
  t.deepEqual(spec.maps.get('ep_shadow_cwords')?.innerMap, spec.maps.get('ep_cwords')?.innerMap);
});

test('layout - every codec field has the offset and size of the C struct member', (t) => {
  for (const [name, codec] of Object.entries(tableCodecs)) {
    t.is<number | undefined, number | undefined>(codec.size, btf.structSize(name), `sizeof(struct ${name})`);
    t.deepEqual(codec.fields, btf.structFields(name), `struct ${name}`);
  }
});

test('layout - conntrack structs have the sizes CONNTRACK.md gives', (t) => {
  // The contract other parts (the reference model, the API, the benchmark) are written against.
  t.is(tableCodecs.ep_ct_key.size, 40);
  t.is(tableCodecs.ep_ct_entry.size, 112); // layout 5: 64 + struct ep_ct_nat (48; layout 4's was 24)
  t.is(tableCodecs.ep_ct_nat.size, 48);
  t.is(tableCodecs.ep_ct_control_key.size, 20);
  t.is(tableCodecs.ep_gen_cfg.size, 8);
  t.is(tableCodecs.ep_ct_cfg.size, 40);
});

test('layout - the shadow structs hold the bounds of the C header', (t) => {
  // EP_SHADOW_NAME_MAX bytes of name after 48 bytes of flag, counts and fingerprint; the sample's
  // 56 bytes are bpf/README.md's figure. EP_SHADOW_SAMPLES is the samples map's size, above.
  t.is(tableCodecs.ep_shadow_cfg.size, 48 + MAX_SHADOW_NAME_BYTES);
  t.is(tableCodecs.ep_shadow_sample.size, 56);
});

test('layout - compiled table entry sizes equal the C structs', (t) => {
  // ep_lpm_key, ep_class_ref and ep_word_key reach the object only as the inner maps' key and
  // value sizes, which the object test above compares with `sizes`.
  t.is<number | undefined, number | undefined>(sizes.bitvec, btf.structSize('ep_bitvec'));
  t.is<number | undefined, number | undefined>(sizes.rule, btf.structSize('ep_rule'));
  t.is<number | undefined, number | undefined>(sizes.counter, btf.structSize('ep_counter'));
});
