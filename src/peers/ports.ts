// Free-port allocation and readiness polling for TCP ports and unix sockets that peer servers listen on.
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

/** Asks the kernel for an unused port on 127.0.0.1. The port is free when this returns, not guaranteed later. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.once('error', reject);
    server.listen({ host: '127.0.0.1', port: 0, exclusive: true }, () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => (port ? resolve(port) : reject(new Error('ports: could not read the allocated port'))));
    });
  });
}

/** One connection attempt; resolves true when something accepted it. */
function tryConnect(options: net.NetConnectOpts, attemptMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(options);
    const done = (ok: boolean) => {
      socket.removeAllListeners();
      socket.on('error', () => {});
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(attemptMs, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

async function poll(what: string, options: net.NetConnectOpts, timeoutMs: number, signal?: AbortSignal): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let delay = 10;
  for (;;) {
    if (signal?.aborted) throw new Error(`ports: gave up waiting for ${what}: ${String(signal.reason ?? 'aborted')}`);
    if (await tryConnect(options, Math.min(1000, Math.max(50, deadline - Date.now())))) return;
    if (Date.now() >= deadline) throw new Error(`ports: nothing accepted connections on ${what} within ${timeoutMs} ms`);
    // Back off gently: most servers come up within a few tens of milliseconds.
    await sleep(delay);
    delay = Math.min(delay * 2, 100);
  }
}

/**
 * Resolves once a TCP connection to host:port succeeds. `signal` lets a launcher stop waiting
 * as soon as the server process dies instead of burning the whole timeout.
 */
export function waitForPort(port: number, host = '127.0.0.1', timeoutMs = 10_000, signal?: AbortSignal): Promise<void> {
  return poll(`${host}:${port}`, { host, port }, timeoutMs, signal);
}

/** Resolves once a unix socket at socketPath accepts a connection (the file existing is not enough). */
export function waitForPath(socketPath: string, timeoutMs = 10_000, signal?: AbortSignal): Promise<void> {
  return poll(socketPath, { path: socketPath }, timeoutMs, signal);
}
