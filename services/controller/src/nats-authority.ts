import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { encodeAccount, encodeOperator, encodeUser, type Account, type User } from '@nats-io/jwt';
import { createAccount, createOperator, createUser, fromPublic, fromSeed, type KeyPair } from '@nats-io/nkeys';
import {
  INTENT_HEAD_SUBJECT,
  INTENT_LIVE_SUBJECT,
  INTENT_STREAM,
  SNAPSHOT_BUCKET,
  kvStreamName,
  natsInboxPrefix,
} from '@edgeplane/proto';
import { ConfigError, NatsAuthorityError } from './errors.js';
import type { NatsCredentialIssuer } from './nats-credential-issuer.js';

/**
 * Sends a signed account JWT to the NATS servers (through the system account: `$SYS.REQ.CLAIMS.UPDATE`)
 * and resolves once a server stored it.
 */
export type AccountJwtPusher = (accountJwt: string) => Promise<void>;

/** A user's NATS credentials: its JWT and nkey seed (a secret). */
export interface NatsUserCredentials {
  jwt: string;
  seed: string;
}

interface IssuedState {
  /** node name -> user public keys issued to it (and the newest expiry of each, unix seconds). */
  nodes: Record<string, Record<string, number>>;
  /** user public key -> { at: revocation time, until: when every JWT it had has expired } (unix seconds). */
  revocations: Record<string, { at: number; until: number }>;
}

const ACCOUNT_NAME = 'EDGEPLANE';
const SYSTEM_ACCOUNT_NAME = 'SYS';

/** Unlimited, JetStream enabled (the log's stream and buckets live in this account). */
const ACCOUNT_LIMITS = { subs: -1, data: -1, payload: -1, imports: -1, exports: -1, wildcards: true, conn: -1, leaf: -1, mem_storage: -1, disk_storage: -1, streams: -1, consumer: -1 };

/**
 * What a node user may do, and nothing more (DESIGN.md, Trust): subscribe to the live and head
 * subjects and its own inbox; publish only the JetStream API requests that reading the log
 * stream (stream info, an ordered consumer: create, next, delete; direct get) and the snapshot
 * bucket (stream info, direct or stream get) need. No edgeplane subject, no stream or bucket
 * administration, no other bucket (node registry, join tokens: their API subjects are not listed).
 */
export function nodePermissions(userPublicKey: string): Pick<User, 'pub' | 'sub' | 'resp'> {
  const snap = kvStreamName(SNAPSHOT_BUCKET);
  return {
    pub: {
      allow: [
        '$JS.API.INFO',
        `$JS.API.STREAM.INFO.${INTENT_STREAM}`,
        `$JS.API.STREAM.INFO.${snap}`,
        // Ephemeral/ordered consumers: the 2.9 subject and the newer named form.
        // Ordered consumers: create (2.9+ puts the consumer's name in the subject) and pull.
        // Not listed: consumer list/names/info/delete, so a node cannot find or remove other
        // consumers (their names are random nuids). Subject wildcards match whole tokens only,
        // so names cannot be limited to a per-node prefix: a node can create consumers on the
        // log stream (read-only access it has anyway; it costs server state until they expire).
        `$JS.API.CONSUMER.CREATE.${INTENT_STREAM}.*`,
        `$JS.API.CONSUMER.MSG.NEXT.${INTENT_STREAM}.*`,
        `$JS.API.DIRECT.GET.${INTENT_STREAM}`,
        `$JS.API.DIRECT.GET.${INTENT_STREAM}.>`,
        `$JS.API.DIRECT.GET.${snap}`,
        `$JS.API.DIRECT.GET.${snap}.>`,
        `$JS.API.STREAM.MSG.GET.${snap}`,
      ],
      deny: [],
    },
    sub: { allow: [INTENT_LIVE_SUBJECT, INTENT_HEAD_SUBJECT, `${natsInboxPrefix(userPublicKey)}.>`], deny: [] },
  };
}

function nowSeconds(): number {
  return Math.floor(Date.now() / 1000);
}

/** Quotes a string for the NATS configuration format. */
function confString(s: string): string {
  return JSON.stringify(s);
}

/**
 * The controller's NATS trust root in NATS's decentralized JWT model
 * (https://docs.nats.io/running-a-nats-service/configuration/securing_nats/jwt): an operator,
 * the system account, and the EDGEPLANE account that holds the log. It signs the account JWTs
 * (with the revocation list), the controller's own user and each node's user JWT. Keys live as
 * nkey seeds in `dir`, mode 0600, created on first open; replicas must share the directory's
 * keys (copy it), as they share the log signing key.
 *
 * Revocation: the account JWT lists revoked user keys; pushing it through the system account to
 * a `full` resolver makes every server close those users' connections and refuse them.
 */
export class NatsAuthority implements NatsCredentialIssuer {
  readonly dir: string;
  #operator: KeyPair;
  #system: KeyPair;
  #account: KeyPair;
  #controllerUser: KeyPair;
  #systemUser: KeyPair;
  #state: IssuedState;
  #push: AccountJwtPusher | undefined;

  private constructor(dir: string, keys: KeyPair[], state: IssuedState) {
    this.dir = dir;
    [this.#operator, this.#system, this.#account, this.#controllerUser, this.#systemUser] = keys as [KeyPair, KeyPair, KeyPair, KeyPair, KeyPair];
    this.#state = state;
  }

  /**
   * Loads the keys from `dir`, creating missing ones (mode 0600, directory 0700).
   * @throws ConfigError if a key file is readable by others or is not the right kind of seed.
   */
  static open(dir: string): NatsAuthority {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const key = (file: string, create: () => KeyPair, prefix: string): KeyPair => {
      const path = join(dir, file);
      if (!existsSync(path)) {
        const kp = create();
        writeFileSync(path, new TextDecoder().decode(kp.getSeed()) + '\n', { mode: 0o600, flag: 'wx' });
        chmodSync(path, 0o600);
      }
      const mode = statSync(path).mode & 0o777;
      if (mode & 0o077) throw new ConfigError(`nats key ${path} is readable by others (mode ${mode.toString(8)}); chmod 600 it`);
      let kp: KeyPair;
      try {
        kp = fromSeed(new TextEncoder().encode(readFileSync(path, 'utf8').trim()));
      } catch (cause) {
        throw new ConfigError(`nats key ${path} is not an nkey seed`, { cause });
      }
      if (!kp.getPublicKey().startsWith(prefix)) throw new ConfigError(`nats key ${path} is not a${prefix === 'O' ? 'n operator' : prefix === 'A' ? 'n account' : ' user'} seed`);
      return kp;
    };
    const keys = [
      key('operator.nk', createOperator, 'O'),
      key('system-account.nk', createAccount, 'A'),
      key('account.nk', createAccount, 'A'),
      key('controller-user.nk', createUser, 'U'),
      key('system-user.nk', createUser, 'U'),
    ];
    const statePath = join(dir, 'issued.json');
    let state: IssuedState = { nodes: {}, revocations: {} };
    if (existsSync(statePath)) {
      try {
        state = JSON.parse(readFileSync(statePath, 'utf8')) as IssuedState;
      } catch (cause) {
        throw new ConfigError(`nats issued-credentials file ${statePath} is not valid JSON`, { cause });
      }
    }
    return new NatsAuthority(dir, keys, state);
  }

  /** The EDGEPLANE account's public key (A...). */
  get accountPublicKey(): string {
    return this.#account.getPublicKey();
  }

  /** The system account's public key (A...). */
  get systemAccountPublicKey(): string {
    return this.#system.getPublicKey();
  }

  /** The operator JWT (self-signed; names the system account). */
  async operatorJwt(): Promise<string> {
    return encodeOperator('edgeplane', this.#operator, { system_account: this.#system.getPublicKey() });
  }

  /** The system account JWT, signed by the operator. */
  async systemAccountJwt(): Promise<string> {
    return encodeAccount(SYSTEM_ACCOUNT_NAME, this.#system, { limits: { subs: -1, data: -1, payload: -1, imports: -1, exports: -1, wildcards: true, conn: -1, leaf: -1 } }, { signer: this.#operator });
  }

  /** The EDGEPLANE account JWT with the current revocation list, signed by the operator (iat = now). */
  async accountJwt(): Promise<string> {
    this.#prune();
    const revocations = Object.fromEntries(Object.entries(this.#state.revocations).map(([k, v]) => [k, v.at]));
    const account: Partial<Account> = { limits: ACCOUNT_LIMITS, revocations };
    return encodeAccount(ACCOUNT_NAME, this.#account, account, { signer: this.#operator });
  }

  /**
   * The authorization part of a nats-server configuration: operator, system account, a `full`
   * resolver storing account JWTs in `resolverDir` (pushed updates, i.e. revocations, persist
   * there), and both account JWTs preloaded. Every server of a cluster gets the same text.
   * `cluster` adds route authentication: routes must present this user and password.
   */
  async serverConfig(resolverDir: string): Promise<string> {
    return [
      `operator: ${confString(await this.operatorJwt())}`,
      `system_account: ${this.#system.getPublicKey()}`,
      // interval: how often servers of a cluster compare their JWT sets (catches a missed push).
      `resolver: { type: full, dir: ${confString(resolverDir)}, allow_delete: false, interval: "2m", timeout: "5s" }`,
      `resolver_preload: {`,
      `  ${this.#system.getPublicKey()}: ${confString(await this.systemAccountJwt())}`,
      `  ${this.#account.getPublicKey()}: ${confString(await this.accountJwt())}`,
      `}`,
    ].join('\n');
  }

  /** The controller's own user in the EDGEPLANE account: may do anything there (publish the log, manage the stream and buckets). No expiry. */
  async controllerCredentials(name = 'controller'): Promise<NatsUserCredentials> {
    const jwt = await encodeUser(name, this.#controllerUser, this.#account, {});
    return { jwt, seed: new TextDecoder().decode(this.#controllerUser.getSeed()) };
  }

  /** The controller's user in the system account: pushes account JWT updates (revocations). */
  async systemCredentials(): Promise<NatsUserCredentials> {
    const jwt = await encodeUser('controller-system', this.#systemUser, this.#system, { pub: { allow: ['$SYS.REQ.CLAIMS.UPDATE', '$SYS.REQ.ACCOUNT.*.CLAIMS.UPDATE'], deny: [] }, sub: { allow: [`${natsInboxPrefix(this.#systemUser.getPublicKey())}.>`], deny: [] } });
    return { jwt, seed: new TextDecoder().decode(this.#systemUser.getSeed()) };
  }

  /** Sets how account updates reach the servers (main.ts: a system-account connection). */
  usePusher(push: AccountJwtPusher): void {
    this.#push = push;
  }

  /**
   * Pushes the current account JWT (with every revocation). The controller calls it on start,
   * so revocations made while a server was down, or recorded when a push failed, take effect.
   * @throws NatsAuthorityError if no pusher is set or the servers refuse it.
   */
  async publishAccount(): Promise<void> {
    if (!this.#push) throw new NatsAuthorityError('push nats account jwt: no system connection');
    try {
      await this.#push(await this.accountJwt());
    } catch (cause) {
      throw new NatsAuthorityError(`push nats account jwt: ${(cause as Error).message}`, { cause });
    }
  }

  async issueNode(nodeName: string, natsPublicKey: string, expiresAt: Date): Promise<string> {
    let ukp: KeyPair;
    try {
      ukp = fromPublic(natsPublicKey);
    } catch (cause) {
      throw new NatsAuthorityError(`issue nats credentials node=${nodeName}: not an nkey public key`, { cause });
    }
    if (!natsPublicKey.startsWith('U')) throw new NatsAuthorityError(`issue nats credentials node=${nodeName}: not a user public key (U...)`);
    const exp = Math.floor(expiresAt.getTime() / 1000);
    if (!Number.isFinite(exp) || exp <= nowSeconds()) throw new NatsAuthorityError(`issue nats credentials node=${nodeName}: expiry ${expiresAt.toISOString?.() ?? String(expiresAt)} is not in the future`);
    if (this.#state.revocations[natsPublicKey]) {
      // JWTs issued at or before the revocation second stay revoked: a revoked key is never reused.
      throw new NatsAuthorityError(`issue nats credentials node=${nodeName}: key ${natsPublicKey} was revoked; the node needs a new key`);
    }
    const jwt = await encodeUser(nodeName, ukp, this.#account, { ...nodePermissions(natsPublicKey), bearer_token: false, allowed_connection_types: ['STANDARD'] }, { exp });
    const keys = (this.#state.nodes[nodeName] ??= {});
    keys[natsPublicKey] = Math.max(keys[natsPublicKey] ?? 0, exp);
    this.#save();
    return jwt;
  }

  async revokeNode(nodeName: string): Promise<void> {
    const keys = this.#state.nodes[nodeName];
    if (keys) {
      const at = nowSeconds();
      for (const [pub, exp] of Object.entries(keys)) this.#state.revocations[pub] = { at, until: exp };
      delete this.#state.nodes[nodeName];
      this.#save();
    }
    // Pushed even when nothing new was recorded: a previous push may have failed.
    await this.publishAccount();
  }

  /** Drops revocations of keys whose every JWT has expired: the server refuses those anyway. */
  #prune(): void {
    const now = nowSeconds();
    let changed = false;
    for (const [pub, r] of Object.entries(this.#state.revocations)) {
      if (r.until < now) {
        delete this.#state.revocations[pub];
        changed = true;
      }
    }
    if (changed) this.#save();
  }

  #save(): void {
    const path = join(this.dir, 'issued.json');
    const tmp = `${path}.tmp`;
    writeFileSync(tmp, JSON.stringify(this.#state), { mode: 0o600 });
    renameSync(tmp, path);
  }
}
