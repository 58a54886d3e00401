export { parseConfig, HELP, type ControllerConfig } from './config.js';
export { startController, type RunningController, type StartExtras } from './main.js';
export { NatsAuthorityError } from './errors.js';
export { NatsAuthority, nodePermissions, type AccountJwtPusher, type NatsUserCredentials } from './nats-authority.js';
export { natsAccountPusher } from './nats-account-pusher.js';
export type { NatsCredentialIssuer } from './nats-credential-issuer.js';
