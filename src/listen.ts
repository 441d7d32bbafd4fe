// Listening addresses: `host:port`, unix socket paths, `fd:N`, and sockets inherited from spawn-fcgi (fd 0) or systemd (fd 3).
import fs from 'node:fs';
import net from 'node:net';
import { FCGI_LISTENSOCK_FILENO } from './fastcgi/protocol.ts';

export type ListenTarget =
  | { kind: 'tcp'; host: string; port: number }
  | { kind: 'unix'; path: string }
  | { kind: 'fd'; fd: number; origin: string };

export function describeTarget(target: ListenTarget): string {
  if (target.kind === 'tcp') return `${target.host.includes(':') ? `[${target.host}]` : target.host}:${target.port}`;
  if (target.kind === 'unix') return `unix:${target.path}`;
  return `fd:${target.fd} (${target.origin})`;
}

/** Parses `host:port`, `[::1]:port`, `:port`, `port`, `unix:/path`, `/path` or `./path`, and `fd:N`. */
export function parseListenAddress(address: string): ListenTarget {
  if (address.startsWith('fd:')) {
    const fd = Number(address.slice(3));
    if (!Number.isInteger(fd) || fd < 0) throw new TypeError(`listen: bad file descriptor in ${JSON.stringify(address)}`);
    return { kind: 'fd', fd, origin: 'given' };
  }
  if (address.startsWith('unix:')) return { kind: 'unix', path: address.slice(5) };
  if (address.includes('/')) return { kind: 'unix', path: address };
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:]*)):(\d+)$/.exec(address) ?? /^()()(\d+)$/.exec(address);
  if (!m) throw new TypeError(`listen: cannot parse address ${JSON.stringify(address)} (host:port, unix:/path or fd:N)`);
  const port = Number(m[3]);
  if (port > 65535) throw new TypeError(`listen: port ${port} out of range`);
  return { kind: 'tcp', host: m[1] || m[2] || '127.0.0.1', port };
}

function isSocket(fd: number): boolean {
  try {
    return fs.fstatSync(fd).isSocket();
  } catch {
    return false;
  }
}

/**
 * The listening socket this process was started with, if any: systemd socket activation passes it
 * as fd 3 with LISTEN_FDS and LISTEN_PID naming this process; spawn-fcgi, mod_fcgid and lighttpd
 * pass it as fd 0 (FCGI_LISTENSOCK_FILENO, §2.2).
 */
export function inheritedListenTarget(env: NodeJS.ProcessEnv = process.env, pid = process.pid): ListenTarget | null {
  const fds = Number(env.LISTEN_FDS);
  if (fds >= 1 && Number(env.LISTEN_PID) === pid && isSocket(3)) return { kind: 'fd', fd: 3, origin: 'systemd socket activation' };
  if (isSocket(FCGI_LISTENSOCK_FILENO)) return { kind: 'fd', fd: FCGI_LISTENSOCK_FILENO, origin: 'inherited on fd 0' };
  return null;
}

export const noListenerHelp =
  'no --listen given and no inherited listening socket: pass --listen 127.0.0.1:9000 or --listen /run/app.sock, ' +
  'or start the responder with spawn-fcgi (socket on fd 0) or systemd socket activation (fd 3, LISTEN_FDS)';

/**
 * A unix socket path left behind by a process that died is removed (as php-fpm does), but one that
 * a live server still answers on is not stolen.
 */
export async function removeStaleSocket(path: string): Promise<void> {
  let stat: fs.Stats;
  try {
    stat = fs.lstatSync(path);
  } catch {
    return;
  }
  if (!stat.isSocket()) throw new Error(`listen: ${path} exists and is not a socket; refusing to replace it`);
  const alive = await new Promise<boolean>((resolve) => {
    const probe = net.connect(path);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
  if (alive) throw new Error(`listen: ${path} is in use by a running server`);
  fs.unlinkSync(path);
}

/** Starts `server` listening; for a unix socket, the file gets `socketMode` (php-fpm's listen.mode). */
export async function listenOn(server: net.Server, target: ListenTarget, socketMode = 0o660): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    const done = () => {
      server.off('error', reject);
      resolve();
    };
    if (target.kind === 'tcp') server.listen({ host: target.host, port: target.port, backlog: 1024 }, done);
    else if (target.kind === 'unix') server.listen({ path: target.path, backlog: 1024 }, done);
    else server.listen({ fd: target.fd, backlog: 1024 }, done);
  });
  if (target.kind === 'unix') fs.chmodSync(target.path, socketMode);
}

export function parseSocketMode(mode: string): number {
  if (!/^0?[0-7]{3,4}$/.test(mode)) throw new TypeError(`--socket-mode must be octal like 0660, got ${JSON.stringify(mode)}`);
  return parseInt(mode, 8);
}
