import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, readdirSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { keyIdOf, privateKeyFromPem, publicKeyFromRaw, rawPublicKey } from '@edgeplane/proto';
import { ConfigError } from './errors.js';

/** The controller's Ed25519 signing key. */
export interface SigningKey {
  privateKey: KeyObject;
  publicKey: Uint8Array;
  keyId: string;
}

/**
 * Loads the signing key from `path` (PKCS#8 PEM), generating it on first start. The file is
 * written with mode 0600 and refused if others can read it.
 * @throws ConfigError if the file is unreadable, not an Ed25519 key, or too open.
 */
export function loadOrCreateSigningKey(path: string): SigningKey {
  if (!existsSync(path)) {
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    const { privateKey } = generateKeyPairSync('ed25519');
    writeFileSync(path, privateKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600, flag: 'wx' });
    chmodSync(path, 0o600);
  }
  const mode = statSync(path).mode & 0o777;
  if (mode & 0o077) throw new ConfigError(`signing key ${path} is readable by others (mode ${mode.toString(8)}); chmod 600 it`);
  let privateKey: KeyObject;
  try {
    privateKey = privateKeyFromPem(readFileSync(path, 'utf8'));
  } catch (cause) {
    throw new ConfigError(`signing key ${path} is not a PEM private key`, { cause });
  }
  if (privateKey.asymmetricKeyType !== 'ed25519') throw new ConfigError(`signing key ${path} is ${privateKey.asymmetricKeyType}, not ed25519`);
  const publicKey = rawPublicKey(privateKey);
  return { privateKey, publicKey, keyId: keyIdOf(publicKey) };
}

/**
 * Returns the public keys of the signing keys this controller used before (kept beside the
 * key as `<key file>.retired-<key id>` by {@link rotateSigningKeyFile}): the log they signed
 * stays verifiable after a rotation.
 * @throws ConfigError if one is not a readable Ed25519 key.
 */
export function retiredSigningKeys(path: string): KeyObject[] {
  const dir = dirname(path);
  const prefix = `${basename(path)}.retired-`;
  let names: string[];
  try {
    names = readdirSync(dir).filter((n) => n.startsWith(prefix) && n.endsWith('.pem'));
  } catch {
    return [];
  }
  return names.sort().map((n) => {
    try {
      return publicKeyFromRaw(rawPublicKey(privateKeyFromPem(readFileSync(join(dir, n), 'utf8'))));
    } catch (cause) {
      throw new ConfigError(`retired signing key ${join(dir, n)} is not an ed25519 PEM key`, { cause });
    }
  });
}

/**
 * Generates the next signing key and writes it to `<path>.next` (mode 0600). After the log
 * entry introducing it is stored, {@link commitSigningKeyFile} makes it the key.
 */
export function prepareNextSigningKey(path: string): SigningKey {
  const { privateKey } = generateKeyPairSync('ed25519');
  writeFileSync(`${path}.next`, privateKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600 });
  const publicKey = rawPublicKey(privateKey);
  return { privateKey, publicKey, keyId: keyIdOf(publicKey) };
}

/** Retires the current key file (`<path>.retired-<id>.pem`) and moves `<path>.next` into its place. */
export function commitSigningKeyFile(path: string, current: SigningKey): void {
  renameSync(path, `${path}.retired-${current.keyId}.pem`);
  renameSync(`${path}.next`, path);
}
