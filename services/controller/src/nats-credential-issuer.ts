/**
 * Issues and withdraws a node's NATS credentials at enrollment and revocation. Implemented with
 * NATS user JWTs (signed by the fleet's account key) on the NATS side; the controller calls it
 * only when one is configured, and then enrollment fails if issuing fails.
 */
export interface NatsCredentialIssuer {
  /**
   * Returns a user JWT for the node's NATS public key (an nkey, "U..."), valid until `expiresAt`,
   * with the node's permissions only (read the live subject, the stream and snapshots).
   */
  issueNode(nodeName: string, natsPublicKey: string, expiresAt: Date): Promise<string>;
  /** Withdraws every NATS credential of the node (its connections are cut). */
  revokeNode(nodeName: string): Promise<void>;
}
