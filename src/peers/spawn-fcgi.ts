// Launcher that runs a FastCGI app under spawn-fcgi in the foreground (-n), so the app inherits the listening socket as fd 0 and keeps the pid we started.
import fs from 'node:fs';
import path from 'node:path';
import { freePort, waitForPath, waitForPort } from './ports.ts';
import { startProcess, stop as stopProcess, waitUntilReady, type ManagedProcess } from './process.ts';
import { makeTempDir, type TempDir } from './tempdir.ts';

export interface SpawnFcgiOptions {
  /** The FastCGI application and its arguments. */
  command: string;
  args?: readonly string[];
  listen?: 'unix' | 'tcp';
  /** Socket path for unix (default DIR/app.sock) and port for tcp (default: a free one). */
  socketPath?: string;
  port?: number;
  /** spawn-fcgi -d: working directory of the app. */
  cwd?: string;
  /** The app's full environment; default this process's. */
  env?: NodeJS.ProcessEnv;
  /** Name for error messages; default "spawn-fcgi". */
  name?: string;
  dir?: string;
  timeoutMs?: number;
  binary?: string;
}

export interface FcgiApp {
  /** "/abs/app.sock" or "127.0.0.1:PORT" (for cgi-fcgi -connect). */
  readonly address: string;
  /** "unix:/abs/app.sock" or "127.0.0.1:PORT" (for nginx fastcgi_pass). */
  readonly nginxAddress: string;
  readonly socketPath: string | undefined;
  readonly port: number | undefined;
  readonly dir: string;
  readonly process: ManagedProcess;
  readonly pid: number;
  stop(): Promise<void>;
}

/** Starts `spawn-fcgi -n ... -- command args` and resolves once the socket accepts connections. */
export async function startSpawnFcgi(options: SpawnFcgiOptions): Promise<FcgiApp> {
  const temp: TempDir | undefined = options.dir ? undefined : await makeTempDir('spawn-fcgi-');
  const dir = options.dir ?? temp!.path;
  const name = options.name ?? 'spawn-fcgi';
  const mode = options.listen ?? (options.port !== undefined ? 'tcp' : 'unix');
  try {
    for (let attempt = 1; ; attempt++) {
      const socketPath = mode === 'unix' ? (options.socketPath ?? path.join(dir, 'app.sock')) : undefined;
      const port = mode === 'tcp' ? (options.port ?? (await freePort())) : undefined;
      // spawn-fcgi refuses to bind over a socket file left by an earlier run.
      if (socketPath) await fs.promises.rm(socketPath, { force: true });
      const bind = socketPath ? ['-s', socketPath, '-M', '0666'] : ['-a', '127.0.0.1', '-p', String(port)];
      const args = ['-n', ...bind, ...(options.cwd ? ['-d', options.cwd] : []), '--', options.command, ...(options.args ?? [])];
      const proc = await startProcess({ name, command: options.binary ?? 'spawn-fcgi', args, env: options.env, cwd: options.cwd ?? dir });
      try {
        await waitUntilReady(proc, (signal) =>
          socketPath ? waitForPath(socketPath, options.timeoutMs ?? 10_000, signal) : waitForPort(port!, '127.0.0.1', options.timeoutMs ?? 10_000, signal),
        );
      } catch (e) {
        const retry = mode === 'tcp' && options.port === undefined && attempt < 3 && /Address already in use/.test((e as Error).message);
        if (retry) continue;
        throw e;
      }
      const address = socketPath ?? `127.0.0.1:${port}`;
      return {
        address,
        nginxAddress: socketPath ? `unix:${socketPath}` : address,
        socketPath,
        port,
        dir,
        process: proc,
        pid: proc.pid,
        async stop() {
          await stopProcess(proc, 'SIGTERM', 5000);
          if (socketPath) await fs.promises.rm(socketPath, { force: true });
          await temp?.cleanup();
        },
      };
    }
  } catch (e) {
    await temp?.cleanup();
    throw e;
  }
}
