import type { NatsConnection } from '@nats-io/transport-node';
import type { AccountJwtPusher } from './nats-authority.js';

/**
 * Returns a pusher that sends account JWTs on `$SYS.REQ.CLAIMS.UPDATE` over `nc`, a connection
 * of the system account (a user from {@link NatsAuthority.systemCredentials}); the `full`
 * resolver of the server that answers stores the JWT and shares it with the cluster. The
 * pusher rejects when no server answers in `timeoutMs` or the answer is an error. Does not own nc.
 */
export function natsAccountPusher(nc: NatsConnection, timeoutMs = 5000): AccountJwtPusher {
  return async (accountJwt) => {
    const reply = await nc.request('$SYS.REQ.CLAIMS.UPDATE', accountJwt, { timeout: timeoutMs });
    const body = reply.json<{ error?: { code?: number; description?: string }; data?: { code?: number; message?: string } }>();
    if (body.error) throw new Error(`server refused the account jwt: ${body.error.description ?? JSON.stringify(body.error)}`);
  };
}
