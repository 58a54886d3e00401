// Child process of datapath-switch.test.ts: runs one frame through the pinned XDP program in a
// tight loop until stdin closes, then prints how many runs passed and dropped.
import { Program } from 'libbpf-ts';

const [pinned, frameHex] = process.argv.slice(2) as [string, string];
const program = Program.openPinned(pinned);
const data = new Uint8Array(Buffer.from(frameHex, 'hex'));
let stop = false;
process.stdin.on('end', () => {
  stop = true;
});
process.stdin.resume();
const verdicts = { pass: 0, drop: 0, other: 0 };
process.send?.('ready');
const loop = (): void => {
  for (let i = 0; i < 2000; i++) {
    const retval = program.testRun({ data }).retval;
    if (retval === 2) verdicts.pass++;
    else if (retval === 1) verdicts.drop++;
    else verdicts.other++;
  }
  if (stop) {
    process.stdout.write(`${JSON.stringify(verdicts)}\n`);
    program.close();
    return;
  }
  setImmediate(loop);
};
loop();
