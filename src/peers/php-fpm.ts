// Launcher for a private php-fpm pool (static children, unix or TCP listener, logs in a temp dir) used as a real FastCGI upstream.
import fs from 'node:fs';
import path from 'node:path';
import { freePort, waitForPath, waitForPort } from './ports.ts';
import { childPids, startProcess, stop as stopProcess, waitUntilReady, type ManagedProcess } from './process.ts';
import { makeTempDir, mkdirShared, type TempDir } from './tempdir.ts';

export interface PhpFpmOptions {
  listen?: 'unix' | 'tcp';
  /** pm.max_children with pm = static; default 2. */
  children?: number;
  /** Working directory of the workers (chdir); scripts are still found through SCRIPT_FILENAME. */
  docroot: string;
  /** Run workers as this user (e.g. "www-data"); by default they run as the caller (root needs -R). */
  user?: string;
  /** Extra pool directives, e.g. "pm.max_requests = 100" or "php_admin_value[memory_limit] = 64M". */
  poolConfig?: string;
  dir?: string;
  port?: number;
  timeoutMs?: number;
  binary?: string;
}

export interface PhpFpmServer {
  /** "/abs/path/php-fpm.sock" or "127.0.0.1:PORT": what nginx's fastcgi_pass and cgi-fcgi -connect take. */
  readonly address: string;
  /** For nginx: "unix:/abs/path.sock" or "127.0.0.1:PORT". */
  readonly nginxAddress: string;
  readonly socketPath: string | undefined;
  readonly port: number | undefined;
  readonly dir: string;
  readonly confPath: string;
  /** The master's log; worker stderr (catch_workers_output) and PHP errors also land here. */
  readonly errorLogPath: string;
  /** The current master process (a new one after restart). */
  readonly process: ManagedProcess;
  readonly pid: number;
  errorLog(): string;
  workerPids(): number[];
  /** Stops the master and starts a fresh one on the same address; resolves when it accepts again. */
  restart(): Promise<void>;
  stop(): Promise<void>;
}

function readFile(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return '';
  }
}

function phpFpmBinary(options: PhpFpmOptions): string {
  if (options.binary) return options.binary;
  for (const candidate of ['/usr/sbin/php-fpm8.2', '/usr/sbin/php-fpm']) if (fs.existsSync(candidate)) return candidate;
  return 'php-fpm8.2';
}

/** Starts `php-fpm -F -R -y conf` and resolves once the pool's socket accepts connections. */
export async function startPhpFpm(options: PhpFpmOptions): Promise<PhpFpmServer> {
  const temp: TempDir | undefined = options.dir ? undefined : await makeTempDir('php-fpm-');
  const dir = options.dir ?? temp!.path;
  await mkdirShared(dir);
  const mode = options.listen ?? 'unix';
  const confPath = path.join(dir, 'php-fpm.conf');
  const errorLogPath = path.join(dir, 'php-fpm.log');
  const pidPath = path.join(dir, 'php-fpm.pid');
  const socketPath = mode === 'unix' ? path.join(dir, 'php-fpm.sock') : undefined;
  const timeoutMs = options.timeoutMs ?? 10_000;

  let port: number | undefined;
  let proc: ManagedProcess | undefined;

  const writeConfig = async () => {
    const listen = socketPath ?? `127.0.0.1:${port}`;
    const user = options.user ? `user = ${options.user}\ngroup = ${options.user}\n` : '';
    await fs.promises.writeFile(
      confPath,
      `[global]
pid = ${pidPath}
error_log = ${errorLogPath}
log_level = notice
daemonize = no

[pool]
${user}listen = ${listen}
listen.mode = 0666
listen.backlog = 511
pm = static
pm.max_children = ${options.children ?? 2}
chdir = ${options.docroot}
catch_workers_output = yes
decorate_workers_output = no
clear_env = yes
php_admin_value[error_log] = ${errorLogPath}
php_admin_flag[log_errors] = on
${options.poolConfig ?? ''}
`,
    );
  };

  const launchOnce = async () => {
    await writeConfig();
    const logStart = fs.existsSync(errorLogPath) ? fs.statSync(errorLogPath).size : 0;
    // -R: allow the master (and, without `user`, the workers) to run as root in tests.
    const p = await startProcess({ name: 'php-fpm', command: phpFpmBinary(options), args: ['-F', '-R', '-y', confPath], cwd: dir });
    await waitUntilReady(
      p,
      (signal) => (socketPath ? waitForPath(socketPath, timeoutMs, signal) : waitForPort(port!, '127.0.0.1', timeoutMs, signal)),
      () => readFile(errorLogPath).slice(logStart).trim().split('\n').slice(-20).join('\n'),
    );
    proc = p;
  };

  const launch = async (fixedPort: boolean) => {
    for (let attempt = 1; ; attempt++) {
      if (mode === 'tcp' && !fixedPort) port = await freePort();
      try {
        return await launchOnce();
      } catch (e) {
        if (fixedPort || mode !== 'tcp' || attempt >= 3 || !/Address already in use/.test((e as Error).message)) throw e;
      }
    }
  };

  try {
    if (options.port !== undefined) port = options.port;
    await launch(options.port !== undefined);
  } catch (e) {
    await temp?.cleanup();
    throw e;
  }

  const address = socketPath ?? `127.0.0.1:${port}`;
  const server: PhpFpmServer = {
    address,
    nginxAddress: socketPath ? `unix:${socketPath}` : address,
    socketPath,
    get port() {
      return port;
    },
    dir,
    confPath,
    errorLogPath,
    get process() {
      return proc!;
    },
    get pid() {
      return proc!.pid;
    },
    errorLog: () => readFile(errorLogPath),
    workerPids: () => childPids(proc!.pid),
    async restart() {
      await stopProcess(proc!, 'SIGTERM', 5000);
      // Keep the same address: clients (nginx upstreams) were configured with it.
      await launch(true);
    },
    async stop() {
      // SIGQUIT is php-fpm's graceful stop; SIGTERM (used here) terminates workers at once.
      await stopProcess(proc!, 'SIGTERM', 5000);
      await temp?.cleanup();
    },
  };
  return server;
}
