// Launcher for fcgiwrap, the FastCGI-to-CGI wrapper nginx uses to run CGI scripts, listening on a unix socket.
import fs from 'node:fs';
import path from 'node:path';
import { waitForPath } from './ports.ts';
import { startProcess, stop as stopProcess, waitUntilReady } from './process.ts';
import { startSpawnFcgi, type FcgiApp } from './spawn-fcgi.ts';
import { makeTempDir, type TempDir } from './tempdir.ts';

export interface FcgiwrapOptions {
  /** -c: preforked processes; default 1. */
  children?: number;
  /** -f: send the scripts' stderr to the client (nginx logs it) instead of fcgiwrap's stderr. */
  stderrToClient?: boolean;
  /** "direct" runs `fcgiwrap -s unix:PATH`; "spawn-fcgi" hands it the socket as fd 0. */
  via?: 'direct' | 'spawn-fcgi';
  /** Environment of fcgiwrap itself; default this process's. */
  env?: NodeJS.ProcessEnv;
  dir?: string;
  timeoutMs?: number;
  binary?: string;
}

export type Fcgiwrap = FcgiApp;

function fcgiwrapBinary(options: FcgiwrapOptions): string {
  return options.binary ?? (fs.existsSync('/usr/sbin/fcgiwrap') ? '/usr/sbin/fcgiwrap' : 'fcgiwrap');
}

/** Starts fcgiwrap on DIR/fcgiwrap.sock (mode 0666, so Apache's www-data children can connect too). */
export async function startFcgiwrap(options: FcgiwrapOptions = {}): Promise<Fcgiwrap> {
  const flags = ['-c', String(options.children ?? 1), ...(options.stderrToClient ? ['-f'] : [])];
  if (options.via === 'spawn-fcgi') {
    return startSpawnFcgi({ name: 'fcgiwrap', command: fcgiwrapBinary(options), args: flags, env: options.env, dir: options.dir, timeoutMs: options.timeoutMs });
  }
  const temp: TempDir | undefined = options.dir ? undefined : await makeTempDir('fcgiwrap-');
  const dir = options.dir ?? temp!.path;
  const socketPath = path.join(dir, 'fcgiwrap.sock');
  try {
    await fs.promises.rm(socketPath, { force: true });
    const proc = await startProcess({ name: 'fcgiwrap', command: fcgiwrapBinary(options), args: [...flags, '-s', `unix:${socketPath}`], env: options.env, cwd: dir });
    await waitUntilReady(proc, (signal) => waitForPath(socketPath, options.timeoutMs ?? 10_000, signal));
    // fcgiwrap creates the socket subject to the umask (0755 typically); connecting needs write access.
    await fs.promises.chmod(socketPath, 0o666);
    return {
      address: socketPath,
      nginxAddress: `unix:${socketPath}`,
      socketPath,
      port: undefined,
      dir,
      process: proc,
      pid: proc.pid,
      async stop() {
        await stopProcess(proc, 'SIGTERM', 5000);
        await fs.promises.rm(socketPath, { force: true });
        await temp?.cleanup();
      },
    };
  } catch (e) {
    await temp?.cleanup();
    throw e;
  }
}
