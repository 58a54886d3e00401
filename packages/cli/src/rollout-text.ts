// Words for rollouts that `rollout status` and `apply --wait` print alike.
import { RolloutState } from '@edgeplane/proto';

/** `progressing`, `succeeded`, ... for a rollout state. */
export const stateName = (s: RolloutState | undefined): string => (s === undefined ? 'unknown' : RolloutState[s]?.replace('ROLLOUT_STATE_', '').toLowerCase() ?? String(s));

/** Whether a rollout in this state still runs (progressing or paused), not ended. */
export const isRunning = (s: RolloutState | undefined): boolean => s === RolloutState.ROLLOUT_STATE_PROGRESSING || s === RolloutState.ROLLOUT_STATE_PAUSED;

/** `, baking 12s more` while a wave's bake time runs, else nothing. */
export function secondsLeft(until: Date | undefined, now: Date): string {
  if (!until) return '';
  const left = Math.ceil((until.getTime() - now.getTime()) / 1000);
  return left > 0 ? `, baking ${left}s more` : '';
}
