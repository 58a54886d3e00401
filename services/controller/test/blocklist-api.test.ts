// BlocklistService through the real controller: mutual TLS, identities from its CA, the embedded
// nats-server and the signed log. Prefix lists change by difference; blocks carry who, why and
// their expiry; both survive a controller restart and a snapshot.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import * as grpc from '@grpc/grpc-js';
import { Action, ApplyPolicyRequest, Block, DeletePolicyRequest, MAX_PREFIX_LIST_CHANGE, Policy, PrefixList, PrefixListUse, Protocol } from '@edgeplane/proto';
import { call, detailsOf } from '../../../test/support/grpc.js';
import { parseConfig, startController, type ControllerConfig, type RunningController } from '../src/index.js';
import { clientsFor, newKey, type ClientCert, type Clients } from './trust-helpers.js';

const dataDir = mkdtempSync(join(tmpdir(), 'ctl-blocklist-'));
// A snapshot every 4 revisions, so the restart below starts from one.
const config = parseConfig(['--listen', '127.0.0.1:0', '--embedded-nats', '127.0.0.1:0', '--data-dir', dataDir, '--shutdown-grace', '1', '--heartbeat-interval', '1', '--snapshot-every', '4'], {}) as ControllerConfig;
let controller: RunningController;
let admin: Clients;
let operator: Clients;
let viewer: Clients;
const ca = (): string => readFileSync(join(dataDir, 'admin', 'ca.pem'), 'utf8');
const adminCert = (): ClientCert => ({ keyPem: readFileSync(join(dataDir, 'admin', 'admin-key.pem'), 'utf8'), certPem: readFileSync(join(dataDir, 'admin', 'admin.pem'), 'utf8') });
let operatorCert: ClientCert;
let viewerCert: ClientCert;

async function issue(role: string, name: string): Promise<ClientCert> {
  const key = newKey();
  const res = await call(admin.trust, admin.trust.issueCertificate, { role, name, publicKey: key.publicDer, lifetime: undefined });
  return { keyPem: key.keyPem, certPem: res.certificate };
}

async function start(): Promise<void> {
  controller = await startController(config, { log: () => undefined });
  admin = clientsFor(controller.address, ca(), adminCert());
  operatorCert ??= await issue('operator', 'ci');
  viewerCert ??= await issue('viewer', 'alice');
  operator = clientsFor(controller.address, ca(), operatorCert);
  viewer = clientsFor(controller.address, ca(), viewerCert);
}
async function stop(): Promise<void> {
  for (const c of [admin, operator, viewer]) c?.close();
  await controller?.close();
}

test.before(start);
test.after.always(async () => {
  await stop();
  rmSync(dataDir, { recursive: true, force: true });
});

async function refusal(p: Promise<unknown>): Promise<grpc.ServiceError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e as grpc.ServiceError,
  );
  if (!err) throw new Error('the call succeeded');
  return err;
}

const list = (name: string, use = PrefixListUse.PREFIX_LIST_USE_DENY_SOURCE): PrefixList => PrefixList.fromPartial({ metadata: { name }, spec: { use, nodeSelector: { matchLabels: { site: 'ams1' } } } });
const update = (name: string, add: string[], remove: string[] = [], as: Clients = operator) => call(as.blocklist, as.blocklist.updatePrefixList, { prefixList: list(name), add, remove, expectedResourceVersion: 0n });

test.serial('BlocklistService prefix lists - created, changed by difference, read whole, counted; bad input refused with field violations', async (t) => {
  const created = await update('feed', ['203.0.113.0/24', '198.51.100.0/24', '2001:db8::/32']);
  t.is(created.prefixCount, 3);
  const v1 = created.prefixList!.metadata!.resourceVersion;
  t.true(v1 > 0n);
  const changed = await update('feed', ['192.0.2.0/24'], ['198.51.100.0/24']);
  t.is(changed.prefixCount, 3);
  t.true(changed.prefixList!.metadata!.resourceVersion > v1);
  t.is(changed.prefixList!.metadata!.createRevision, v1);
  const got = await call(viewer.blocklist, viewer.blocklist.getPrefixList, { name: 'feed', omitPrefixes: false });
  t.deepEqual(got.prefixList!.spec!.prefixes, ['203.0.113.0/24', '2001:db8::/32', '192.0.2.0/24']);
  t.is(got.prefixList!.spec!.use, PrefixListUse.PREFIX_LIST_USE_DENY_SOURCE);
  const lists = await call(viewer.blocklist, viewer.blocklist.listPrefixLists, {});
  t.deepEqual(lists.prefixCounts, [3]);
  t.deepEqual(lists.prefixLists[0]!.spec!.prefixes, []);

  const bad = await refusal(update('feed', ['10.0.0.1/8', 'nonsense']));
  t.is(bad.code, grpc.status.INVALID_ARGUMENT);
  t.deepEqual(detailsOf(bad)?.fieldViolations.map((v) => v.field), ['add[0]', 'add[1]']);
  const present = await refusal(update('feed', ['192.0.2.0/24']));
  t.is(present.code, grpc.status.INVALID_ARGUMENT);
  t.is(detailsOf(present)?.fieldViolations[0]?.field, 'add[0]');
  const absent = await refusal(update('feed', [], ['198.51.100.0/24']));
  t.is(absent.code, grpc.status.INVALID_ARGUMENT);
  const tooMany = await refusal(update('feed', Array.from({ length: MAX_PREFIX_LIST_CHANGE + 1 }, (_, i) => `10.${i >> 16}.${(i >> 8) & 255}.${i & 255}/32`)));
  t.is(tooMany.code, grpc.status.INVALID_ARGUMENT);
  t.regex(tooMany.details, /at most 50000 together/);
  const stale = await refusal(call(operator.blocklist, operator.blocklist.updatePrefixList, { prefixList: list('feed'), add: ['10.0.0.0/8'], remove: [], expectedResourceVersion: v1 }));
  t.is(stale.code, grpc.status.ABORTED);
  // Nothing of the refused writes landed.
  t.is((await call(viewer.blocklist, viewer.blocklist.getPrefixList, { name: 'feed', omitPrefixes: true })).prefixCount, 3);
});

test.serial('BlocklistService - every RPC is authorized: a viewer reads but cannot write', async (t) => {
  const denied = await refusal(update('viewer-list', ['203.0.113.0/24'], [], viewer));
  t.is(denied.code, grpc.status.PERMISSION_DENIED);
  const block = await refusal(call(viewer.blocklist, viewer.blocklist.createBlock, { block: Block.fromPartial({ prefixes: ['203.0.113.0/24'], reason: 'x' }), duration: { seconds: 60n, nanos: 0 } }));
  t.is(block.code, grpc.status.PERMISSION_DENIED);
  await call(viewer.blocklist, viewer.blocklist.listBlocks, { includeEnded: true });
});

test.serial('BlocklistService blocks - created with who, why and expiry, lifted early, listed active and ended; they and lists survive a restart from a snapshot', async (t) => {
  const created = await call(operator.blocklist, operator.blocklist.createBlock, { block: Block.fromPartial({ prefixes: ['203.0.113.0/24'], nodeSelector: { matchLabels: { site: 'ams1' } }, reason: 'scanner from ticket 42' }), duration: { seconds: 3600n, nanos: 0 } });
  const block = created.block!;
  t.regex(block.id, /^blk-\d+$/);
  t.is(block.createdBy, 'operator/ci');
  t.is(block.expireTime!.getTime() - block.createTime!.getTime(), 3_600_000);
  const short = await call(operator.blocklist, operator.blocklist.createBlock, { block: Block.fromPartial({ prefixes: ['198.51.100.7/32'], reason: 'lift me' }), duration: { seconds: 60n, nanos: 0 } });
  const lifted = await call(admin.blocklist, admin.blocklist.liftBlock, { id: short.block!.id });
  t.is(lifted.block!.liftedBy, 'admin/admin');
  t.truthy(lifted.block!.liftTime);
  const again = await refusal(call(admin.blocklist, admin.blocklist.liftBlock, { id: short.block!.id }));
  t.is(again.code, grpc.status.FAILED_PRECONDITION);
  const missingReason = await refusal(call(operator.blocklist, operator.blocklist.createBlock, { block: Block.fromPartial({ prefixes: ['198.51.100.7/32'], reason: '' }), duration: { seconds: 0n, nanos: 0 } }));
  t.is(missingReason.code, grpc.status.INVALID_ARGUMENT);
  t.deepEqual(detailsOf(missingReason)?.fieldViolations.map((v) => v.field).sort(), ['block.reason', 'duration']);

  const active = await call(viewer.blocklist, viewer.blocklist.listBlocks, { includeEnded: false });
  t.deepEqual(active.blocks.map((b) => b.id), [block.id]);
  const all = await call(viewer.blocklist, viewer.blocklist.listBlocks, { includeEnded: true });
  t.deepEqual(all.blocks.map((b) => b.id), [short.block!.id, block.id]);

  await stop();
  await start();
  const after = await call(viewer.blocklist, viewer.blocklist.listBlocks, { includeEnded: true });
  t.deepEqual(after.blocks.map((b) => [b.id, b.reason, b.createdBy, b.expireTime!.getTime()]), all.blocks.map((b) => [b.id, b.reason, b.createdBy, b.expireTime!.getTime()]));
  const feed = await call(viewer.blocklist, viewer.blocklist.getPrefixList, { name: 'feed', omitPrefixes: false });
  t.deepEqual(feed.prefixList!.spec!.prefixes, ['203.0.113.0/24', '2001:db8::/32', '192.0.2.0/24']);
  // And it keeps changing by difference on top of what it restored.
  t.is((await update('feed', ['100.64.0.0/10'])).prefixCount, 4);
});

test.serial('prefix lists named by policies - a policy naming a missing list is refused; a list a policy (or a rollout\'s previous version) names cannot be deleted', async (t) => {
  const naming = (list: string): Policy => Policy.fromPartial({ metadata: { name: 'names-scanners' }, spec: { rules: [{ priority: 1, protocol: Protocol.PROTOCOL_TCP, sourcePrefixLists: [list], action: Action.ACTION_DENY }] } });
  const missing = await refusal(call(operator.intent, operator.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: naming('scanners') })));
  t.is(missing.code, grpc.status.FAILED_PRECONDITION);
  t.regex(missing.details, /rules\[0\]\.source_prefix_lists\[0\] names prefix list scanners, which does not exist/);
  await update('scanners', ['198.51.100.0/24']);
  const applied = await call(operator.intent, operator.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: naming('scanners') }));
  t.true(applied.created);
  const inUse = await refusal(call(operator.blocklist, operator.blocklist.deletePrefixList, { name: 'scanners', expectedResourceVersion: 0n }));
  t.is(inUse.code, grpc.status.FAILED_PRECONDITION);
  t.regex(inUse.details, /prefix list scanners is named by policy names-scanners \(rules\[0\]\.source_prefix_lists\[0\]\)/);
  t.is((await call(viewer.blocklist, viewer.blocklist.getPrefixList, { name: 'scanners', omitPrefixes: true })).prefixCount, 1, 'still there');
  await call(operator.intent, operator.intent.deletePolicy, DeletePolicyRequest.fromPartial({ name: 'names-scanners', expectedResourceVersion: applied.policy!.metadata!.resourceVersion }));
  await call(operator.blocklist, operator.blocklist.deletePrefixList, { name: 'scanners', expectedResourceVersion: 0n });
  t.is((await refusal(call(viewer.blocklist, viewer.blocklist.getPrefixList, { name: 'scanners', omitPrefixes: true }))).code, grpc.status.NOT_FOUND);
});
