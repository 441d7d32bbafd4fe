// The servers a soak or fault run drives: the FastCGI responder behind a private nginx, or `cgi-runner serve` on its own, each a real process started from the command line.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { readCmdline } from '../bench/proc-stats.ts';
import {
  NGINX_FASTCGI_PARAMS,
  childPids,
  freePort,
  makeTempDir,
  startNginx,
  startProcess,
  stop as stopProcess,
  waitForPath,
  waitForPort,
  waitUntilReady,
  type ManagedProcess,
  type NginxServer,
  type TempDir,
} from '../peers/index.ts';
import { writeCgiScripts } from './scripts.ts';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const cliPath = path.join(repoRoot, 'src/cli.ts');
export const soakAppPath = path.join(repoRoot, 'src/soak/app.ts');

export interface SoakStack {
  /** Base URL of the routes hello, echo, stream, flaky... */
  readonly baseUrl: string;
  /** The runner's own process (the responder, or the cluster primary; or `serve`). */
  readonly runner: ManagedProcess;
  readonly nginx: NginxServer | undefined;
  readonly dir: string;
  /** The processes whose memory and descriptors are watched: the runner and its workers, or `serve` (and its spawner helpers, when it uses them). */
  watchedPids(): number[];
  stop(): Promise<void>;
}

/** Argv running a cgi-runner command with this Node (in repoRoot, where `--import tsx` resolves). */
export function cliArgs(command: string, args: readonly string[]): { command: string; args: string[] } {
  return { command: process.execPath, args: ['--import', 'tsx', cliPath, command, ...args] };
}

export interface FcgiStackOptions {
  /** node:cluster workers (1: a single process, no cluster). */
  workers?: number;
  /** Upstream keep-alive connections nginx holds per worker. Default 32. */
  keepalive?: number;
  /** More `fcgi` flags. */
  args?: readonly string[];
  /** nginx worker processes. Default 1. */
  nginxWorkers?: number;
  /** Append the runner's stderr (its error log) to this file. */
  logFile?: string;
}

/** The responder for src/soak/app.ts on a unix socket, behind nginx with fastcgi_keep_conn. */
export async function startFcgiStack(options: FcgiStackOptions = {}): Promise<SoakStack> {
  const temp = await makeTempDir('soak-fcgi-');
  const socket = path.join(temp.path, 'app.sock');
  const workers = options.workers ?? 1;
  const { command, args } = cliArgs('fcgi', ['--listen', socket, '--app', soakAppPath, '--socket-mode', '0666', '--workers', String(workers), '--no-access-log', ...(options.args ?? [])]);
  let runner: ManagedProcess | undefined;
  let nginx: NginxServer | undefined;
  try {
    runner = await startProcess({ name: 'cgi-runner fcgi', command, args, cwd: repoRoot, stderrFile: options.logFile });
    await waitUntilReady(runner, (signal) => waitForPath(socket, 30_000, signal));
    if (workers > 1) {
      // The socket accepts as soon as the primary listens; wait for every worker.
      const deadline = Date.now() + 30_000;
      while (childPids(runner.pid).length < workers && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    }
    nginx = await startNginx({
      workerProcesses: options.nginxWorkers ?? 1,
      errorLogLevel: 'warn',
      http: `
access_log off;
upstream soak_app { server unix:${socket}; keepalive ${options.keepalive ?? 32}; }
server {
  listen 127.0.0.1:{{port}};
  client_max_body_size 8m;
  client_body_buffer_size 2m;
  location /app/ {
    ${NGINX_FASTCGI_PARAMS}
    fastcgi_keep_conn on;
    fastcgi_pass soak_app;
  }
}`,
    });
  } catch (err) {
    if (runner) await stopProcess(runner, 'SIGTERM', 5000);
    await temp.cleanup();
    throw err;
  }
  const proc = runner;
  const web = nginx;
  return {
    baseUrl: `${web.url}/app/`,
    runner: proc,
    nginx: web,
    dir: temp.path,
    watchedPids: () => [proc.pid, ...childPids(proc.pid)],
    async stop() {
      await web.stop();
      await stopProcess(proc, 'SIGTERM', 10_000);
      await temp.cleanup();
    },
  };
}

export interface CgiStackOptions {
  maxScripts?: number;
  /** More `serve` flags. */
  args?: readonly string[];
  /** Extra environment for `serve` (e.g. TMPDIR for the spool directory). */
  env?: NodeJS.ProcessEnv;
  /** Scripts to write instead of the soak scripts. */
  scripts?: Record<string, string>;
  /** Append the runner's stderr (its error log) to this file. */
  logFile?: string;
}

/** `cgi-runner serve` over the soak scripts (Perl), on a free port. */
export async function startCgiStack(options: CgiStackOptions = {}): Promise<SoakStack> {
  const temp: TempDir = await makeTempDir('soak-cgi-');
  const dir = path.join(temp.path, 'cgi-bin');
  writeCgiScripts(dir, options.scripts);
  fs.chmodSync(dir, 0o755);
  const port = await freePort();
  const { command, args } = cliArgs('serve', [
    '--port', String(port),
    '--cgi-dir', dir,
    '--max-scripts', String(options.maxScripts ?? 16),
    ...(options.args ?? []),
  ]);
  let runner: ManagedProcess | undefined;
  try {
    runner = await startProcess({ name: 'cgi-runner serve', command, args, cwd: repoRoot, env: { ...process.env, ...options.env }, stderrFile: options.logFile });
    await waitUntilReady(runner, (signal) => waitForPort(port, '127.0.0.1', 30_000, signal));
  } catch (err) {
    if (runner) await stopProcess(runner, 'SIGTERM', 5000);
    await temp.cleanup();
    throw err;
  }
  const proc = runner;
  return {
    baseUrl: `http://127.0.0.1:${port}/cgi-bin/`,
    runner: proc,
    nginx: undefined,
    dir: temp.path,
    // The runner, its spawner helpers (when it starts scripts through them) and the esbuild service tsx starts; scripts come and go.
    watchedPids: () => [proc.pid, ...childPids(proc.pid).filter((pid) => /spawner|esbuild/.test(readCmdline(pid)))],
    async stop() {
      await stopProcess(proc, 'SIGTERM', 10_000);
      await temp.cleanup();
    },
  };
}

