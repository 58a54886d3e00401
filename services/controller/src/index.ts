export { parseConfig, HELP, type ControllerConfig } from './config.js';
export { startController, type RunningController, type StartExtras } from './main.js';
