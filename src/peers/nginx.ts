// Launcher for a private nginx instance (own config, temp paths, logs and port) used by integration tests and benchmarks.
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePort, waitForPort } from './ports.ts';
import { childPids, startProcess, stop as stopProcess, waitUntilReady, type ManagedProcess } from './process.ts';
import { makeTempDir, mkdirShared, type TempDir } from './tempdir.ts';

export interface ConfigContext {
  /** The port allocated for this instance (use it in `listen 127.0.0.1:PORT;`). */
  port: number;
  /** The instance directory (prefix): logs, pid, temp paths and anything the caller puts there. */
  dir: string;
}

/** Config text, or a function of the context. In text, `{{port}}` and `{{dir}}` are replaced. */
export type ConfigSource = string | ((ctx: ConfigContext) => string);

export interface NginxOptions {
  /** server/upstream blocks placed inside http{} of a generated nginx.conf. */
  http?: ConfigSource;
  /** A complete nginx.conf used as is (after placeholder substitution), instead of `http`. */
  fullConfig?: ConfigSource;
  /** Use this directory instead of a fresh temp dir (which is then not removed on stop). */
  dir?: string;
  /** Port for {{port}}; by default a free one is picked. */
  port?: number;
  workerProcesses?: number;
  /** Level of the generated error_log; default "notice" (shows worker starts, useful in failures). */
  errorLogLevel?: string;
  /** Startup and reload timeout; default 10 s. */
  timeoutMs?: number;
  /** Path of the nginx binary; default "nginx" from PATH, else /usr/sbin/nginx. */
  binary?: string;
}

export interface NginxServer {
  /** The listen port, when the config listens on the allocated port; undefined otherwise. */
  readonly port: number | undefined;
  /** http://127.0.0.1:PORT when port is known. */
  readonly url: string | undefined;
  readonly dir: string;
  readonly confPath: string;
  readonly errorLogPath: string;
  readonly accessLogPath: string;
  readonly pidPath: string;
  readonly process: ManagedProcess;
  readonly pid: number;
  /** The whole error log (also after stop). */
  errorLog(): string;
  /** Error log lines at level error, crit, alert or emerg: assert this is empty. */
  errors(): string[];
  /** Pids of the current worker (and cache) processes. */
  workerPids(): number[];
  /** Optionally rewrites the config, sends SIGHUP and resolves when new workers run; rejects on a bad config. */
  reload(config?: { http?: ConfigSource; fullConfig?: ConfigSource }): Promise<void>;
  stop(): Promise<void>;
}

const SERIOUS = /\[(error|crit|alert|emerg)\]/;

/** The lines of an nginx error log at level error or worse. */
export function errorLogProblems(text: string): string[] {
  return text.split('\n').filter((line) => SERIOUS.test(line));
}

/**
 * http{}-level directives that keep every temp file of nginx under dir; a template for a full
 * config should include them, because the compiled-in defaults point at /var/lib/nginx.
 */
export function nginxTempPaths(dir: string): string {
  return ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi']
    .map((kind) => `${kind}_temp_path ${path.join(dir, 'tmp', kind)};`)
    .join('\n');
}

/**
 * FastCGI params for a location: Debian's fastcgi_params lacks SCRIPT_FILENAME, and setting a
 * param twice makes nginx send it twice, so it is added here exactly once.
 */
export const NGINX_FASTCGI_PARAMS =
  'include /etc/nginx/fastcgi_params;\nfastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;';

function render(source: ConfigSource, ctx: ConfigContext): string {
  const text = typeof source === 'function' ? source(ctx) : source;
  return text.replaceAll('{{port}}', String(ctx.port)).replaceAll('{{dir}}', ctx.dir);
}

function generatedConfig(http: string, ctx: ConfigContext, paths: Paths, options: NginxOptions): string {
  const isRoot = process.getuid?.() === 0;
  const mime = fs.existsSync('/etc/nginx/mime.types') ? 'include /etc/nginx/mime.types;\n' : '';
  return `daemon off;
master_process on;
${isRoot ? 'user root;\n' : ''}worker_processes ${options.workerProcesses ?? 1};
pid ${paths.pid};
lock_file ${path.join(ctx.dir, 'nginx.lock')};
error_log ${paths.errorLog} ${options.errorLogLevel ?? 'notice'};

events {
  worker_connections 1024;
}

http {
${mime}default_type application/octet-stream;
access_log ${paths.accessLog};
${nginxTempPaths(ctx.dir)}

${http}
}
`;
}

interface Paths {
  conf: string;
  pid: string;
  errorLog: string;
  accessLog: string;
}

/** Finds a main-context directive's first argument in a full config, relative to the prefix. */
function directive(conf: string, name: string, dir: string): string | undefined {
  const match = new RegExp(`^\\s*${name}\\s+([^\\s;]+)`, 'm').exec(conf);
  if (!match) return undefined;
  return path.resolve(dir, match[1]!.replace(/^["']|["']$/g, ''));
}

function listensOn(conf: string, port: number): boolean {
  return new RegExp(`\\blisten\\s+(?:[^\\s;:]+:|\\[[^\\]]*\\]:)?${port}\\b`).test(conf);
}

function nginxBinary(options: NginxOptions): string {
  if (options.binary) return options.binary;
  return fs.existsSync('/usr/sbin/nginx') ? '/usr/sbin/nginx' : 'nginx';
}

function isShuttingDown(pid: number): boolean {
  return readFile(`/proc/${pid}/cmdline`).includes('shutting down');
}

function readFile(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return '';
  }
}

function buildConfig(
  source: { http?: ConfigSource; fullConfig?: ConfigSource },
  ctx: ConfigContext,
  defaults: Paths,
  options: NginxOptions,
): { text: string; paths: Paths } {
  if (source.fullConfig !== undefined) {
    const text = render(source.fullConfig, ctx);
    return {
      text,
      paths: {
        conf: defaults.conf,
        pid: directive(text, 'pid', ctx.dir) ?? defaults.pid,
        errorLog: directive(text, 'error_log', ctx.dir) ?? defaults.errorLog,
        accessLog: directive(text, 'access_log', ctx.dir) ?? defaults.accessLog,
      },
    };
  }
  if (source.http === undefined) throw new Error('nginx: pass either `http` or `fullConfig`');
  return { text: generatedConfig(render(source.http, ctx), ctx, defaults, options), paths: defaults };
}

/** Starts nginx in the foreground and resolves once its port (or, without a known port, its pid file) is ready. */
export async function startNginx(options: NginxOptions): Promise<NginxServer> {
  const temp: TempDir | undefined = options.dir ? undefined : await makeTempDir('nginx-');
  const dir = options.dir ?? temp!.path;
  await mkdirShared(dir);
  for (const kind of ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi']) await mkdirShared(path.join(dir, 'tmp', kind));
  const timeoutMs = options.timeoutMs ?? 10_000;
  const defaults: Paths = {
    conf: path.join(dir, 'nginx.conf'),
    pid: path.join(dir, 'nginx.pid'),
    errorLog: path.join(dir, 'error.log'),
    accessLog: path.join(dir, 'access.log'),
  };

  // The port is free when picked but another process may grab it before nginx binds; retry then.
  for (let attempt = 1; ; attempt++) {
    const ctx: ConfigContext = { port: options.port ?? (await freePort()), dir };
    try {
      return await launch(options, ctx, defaults, temp, timeoutMs);
    } catch (e) {
      const retry = options.port === undefined && attempt < 3 && /Address already in use/.test((e as Error).message);
      if (!retry) {
        await temp?.cleanup();
        throw e;
      }
    }
  }
}

async function launch(options: NginxOptions, ctx: ConfigContext, defaults: Paths, temp: TempDir | undefined, timeoutMs: number): Promise<NginxServer> {
  let { text, paths } = buildConfig(options, ctx, defaults, options);
  await fs.promises.writeFile(paths.conf, text);
  await fs.promises.rm(paths.pid, { force: true });
  const errorLogStart = fs.existsSync(paths.errorLog) ? fs.statSync(paths.errorLog).size : 0;

  const args = ['-c', paths.conf, '-p', ctx.dir + '/', '-e', paths.errorLog];
  // A full config written for a system install may daemonize or lack a pid; override just those.
  const globals: string[] = [];
  if (!/^\s*daemon\s/m.test(text)) globals.push('daemon off;');
  if (!/^\s*pid\s/m.test(text)) globals.push(`pid ${paths.pid};`);
  if (globals.length) args.push('-g', globals.join(' '));

  const proc = await startProcess({ name: 'nginx', command: nginxBinary(options), args, cwd: ctx.dir });
  const port = listensOn(text, ctx.port) ? ctx.port : undefined;
  const newLog = () => readFile(paths.errorLog).slice(errorLogStart);

  await waitUntilReady(
    proc,
    async (signal) => {
      if (port !== undefined) return waitForPort(port, '127.0.0.1', timeoutMs, signal);
      // nginx writes its pid file after binding every listen socket.
      const deadline = Date.now() + timeoutMs;
      while (readFile(paths.pid).trim() !== String(proc.pid)) {
        if (signal.aborted) throw signal.reason;
        if (Date.now() > deadline) throw new Error(`no pid file ${paths.pid} after ${timeoutMs} ms`);
        await sleep(20);
      }
    },
    () => errorLogProblems(newLog()).join('\n'),
  );

  let finalLog: string | undefined;
  const server: NginxServer = {
    port,
    url: port === undefined ? undefined : `http://127.0.0.1:${port}`,
    dir: ctx.dir,
    confPath: paths.conf,
    get errorLogPath() {
      return paths.errorLog;
    },
    get accessLogPath() {
      return paths.accessLog;
    },
    get pidPath() {
      return paths.pid;
    },
    process: proc,
    pid: proc.pid,
    errorLog: () => finalLog ?? readFile(paths.errorLog),
    errors: () => errorLogProblems(server.errorLog()),
    workerPids: () => childPids(proc.pid),
    async reload(config) {
      if (config) {
        const next = buildConfig(config, ctx, defaults, options);
        text = next.text;
        paths = next.paths;
        await fs.promises.writeFile(paths.conf, text);
      }
      const before = new Set(childPids(proc.pid));
      const logStart = fs.existsSync(paths.errorLog) ? fs.statSync(paths.errorLog).size : 0;
      process.kill(proc.pid, 'SIGHUP');
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        // Success: the master forked workers with the new config. Failure: it kept the old one and said why.
        // Old workers still accept until they notice the signal, so also wait until each is gone or
        // has retitled itself "worker process is shutting down" (done right before closing its listeners).
        const now = childPids(proc.pid);
        if (now.some((pid) => !before.has(pid)) && now.every((pid) => !before.has(pid) || isShuttingDown(pid))) return;
        const problems = errorLogProblems(readFile(paths.errorLog).slice(logStart)).filter((l) => /\[emerg\]/.test(l));
        if (problems.length) throw new Error(`nginx: reload failed: ${problems.join('\n')}`);
        if (proc.exitStatus()) throw new Error(`nginx: exited during reload: ${proc.outputTail()}`);
        if (Date.now() > deadline) throw new Error(`nginx: reload did not start new workers within ${timeoutMs} ms`);
        await sleep(20);
      }
    },
    async stop() {
      await stopProcess(proc, 'SIGTERM', 5000);
      finalLog = readFile(paths.errorLog);
      await temp?.cleanup();
    },
  };
  return server;
}
