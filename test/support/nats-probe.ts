import { connect as tcpConnect } from 'node:net';

/** What a NATS server said to a client that spoke plaintext: its INFO line and everything after it. */
export interface PlaintextAnswer {
  info: string;
  rest: string;
}

/**
 * Speaks the NATS protocol to host:port without a TLS handshake (INFO, then CONNECT and PING)
 * and returns what the server said until it closed the connection. A server that requires TLS
 * announces `"tls_required":true` and never answers the PING with PONG.
 * @throws Error if the server keeps the connection open for `timeoutMs`.
 */
export function plaintextNatsProbe(host: string, port: number, timeoutMs = 15_000): Promise<PlaintextAnswer> {
  return new Promise((resolve, reject) => {
    const s = tcpConnect({ host, port });
    let buf = '';
    let sent = false;
    s.on('data', (d) => {
      buf += d.toString('latin1');
      if (!sent && buf.includes('\r\n')) {
        sent = true;
        s.write('CONNECT {"verbose":false}\r\nPING\r\n');
      }
    });
    s.on('error', () => undefined);
    s.on('close', () => {
      const i = buf.indexOf('\r\n');
      resolve({ info: buf.slice(0, i), rest: buf.slice(i + 2) });
    });
    s.setTimeout(timeoutMs, () => {
      s.destroy();
      reject(new Error(`${host}:${port} kept the plaintext connection open`));
    });
  });
}
