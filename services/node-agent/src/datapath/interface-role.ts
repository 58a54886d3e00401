// How the agent uses an interface. A pure type: the agent's logic (config, compile, the agent
// loop) and the eBPF adapter both import it from here, so pure code never imports the adapter.

/** How an interface is used: XDP on an uplink, TC ingress + egress on a workload interface. */
export type InterfaceRole = 'uplink' | 'workload';

/** Every role, in the order the agent applies them. */
export const INTERFACE_ROLES: readonly InterfaceRole[] = ['uplink', 'workload'];

/** @returns true if `value` names a role ('uplink' or 'workload'). */
export function isInterfaceRole(value: unknown): value is InterfaceRole {
  return value === 'uplink' || value === 'workload';
}
