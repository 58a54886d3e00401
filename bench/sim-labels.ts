// The labels of simulated agent number `index` (bench/fleet-sim.ts): with --mtls the bench puts
// them in that agent's join token, and the controller holds every hello to them.
export const simLabels = (index: number): Record<string, string> => ({ role: 'edge', site: `site-${index % 10}` });
