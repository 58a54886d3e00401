/**
 * Issues and revokes the NATS credentials of nodes. Enrollment calls issueNode when a node
 * joins (and when it renews), and revokeNode when the node is removed or revoked.
 */
export interface NatsCredentialIssuer {
  /**
   * Issues a user JWT for `nodeName`'s NATS key `natsPublicKey` (a user nkey, `U...`; the node
   * keeps the seed) that expires at `expiresAt`. The JWT carries the node's permissions: follow
   * the live and head subjects, read the log stream and the snapshot, nothing else.
   * @returns the user JWT.
   * @throws NatsAuthorityError if the key is not a user public key or the expiry is not in the future.
   */
  issueNode(nodeName: string, natsPublicKey: string, expiresAt: Date): Promise<string>;
  /**
   * Revokes every JWT issued to `nodeName` so far; the servers close its connections and refuse
   * them from then on. Idempotent; a name never issued is a no-op.
   * @throws NatsAuthorityError if the servers could not be told (the revocation is kept and
   *   pushed again on the next start or revocation).
   */
  revokeNode(nodeName: string): Promise<void>;
}
