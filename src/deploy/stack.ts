// Runs the deploy/ recipes for real: nginx and Apache with exactly the files in deploy/ (laid out as the
// official images mount them), and `cgi-runner fcgi` responders, for the tests and the measurements.
import fs from 'node:fs';
import path from 'node:path';
import {
  freePort,
  makeTempDir,
  mkdirShared,
  startNginx,
  startProcess,
  stop as stopProcess,
  waitForPath,
  waitForPort,
  waitUntilReady,
  nginxTempPaths,
  APACHE_MODULES_DIR,
  type ManagedProcess,
  type NginxServer,
  type TempDir,
} from '../peers/index.ts';
import { deployDir, renderTemplateDir, repoRoot } from './template.ts';

export const cliPath = path.join(repoRoot, 'src/cli.ts');

/** `node --import tsx src/cli.ts ARGS`, runnable from any working directory. */
export function cliCommand(args: readonly string[]): { command: string; args: string[] } {
  return { command: process.execPath, args: ['--import', 'tsx', cliPath, ...args] };
}

export interface Fcgi {
  readonly process: ManagedProcess;
  readonly pid: number;
  /** "/abs/app.sock" or "127.0.0.1:PORT". */
  readonly address: string;
  readonly port: number | undefined;
  readonly socketPath: string | undefined;
  output(): string;
  stop(): Promise<void>;
}

export interface FcgiOptions {
  /** --app FILE, or other flags (--cgi-dir DIR) through args. */
  app?: string;
  /** A unix socket path, or 'tcp' for a free port on 127.0.0.1. */
  listen: string;
  args?: readonly string[];
  env?: NodeJS.ProcessEnv;
  name?: string;
}

/** Starts `cgi-runner fcgi --listen ... --socket-mode 0666` and resolves once it accepts connections. */
export async function startFcgi(options: FcgiOptions): Promise<Fcgi> {
  const port = options.listen === 'tcp' ? await freePort() : undefined;
  const socketPath = port === undefined ? options.listen : undefined;
  const address = socketPath ?? `127.0.0.1:${port}`;
  const { command, args } = cliCommand([
    'fcgi',
    '--listen',
    address,
    '--socket-mode',
    '0666',
    ...(options.app ? ['--app', options.app] : []),
    ...(options.args ?? []),
  ]);
  const proc = await startProcess({ name: options.name ?? 'cgi-runner fcgi', command, args, cwd: repoRoot, env: options.env ?? { ...process.env } });
  await waitUntilReady(proc, (signal) => (socketPath ? waitForPath(socketPath, 20_000, signal) : waitForPort(port!, '127.0.0.1', 20_000, signal)));
  return {
    process: proc,
    pid: proc.pid,
    address,
    port,
    socketPath,
    output: () => proc.stdout() + proc.stderr(),
    stop: () => stopProcess(proc, 'SIGTERM', 10_000),
  };
}

export interface DeployNginx {
  readonly nginx: NginxServer;
  readonly dir: string;
  /** The rendered conf.d files. */
  readonly rendered: string[];
  stop(): Promise<void>;
}

/**
 * nginx with the image's layout: DIR/nginx.conf includes DIR/conf.d/*.conf, rendered from
 * deploy/nginx/templates (or the given templates), and DIR/cgi-runner is deploy/nginx itself.
 */
export async function startDeployNginx(options: {
  vars: Record<string, string>;
  /** Template files; default every file of deploy/nginx/templates, as the image renders them. */
  templates?: readonly string[];
  workerProcesses?: number;
}): Promise<DeployNginx> {
  const temp: TempDir = await makeTempDir('deploy-nginx-');
  const dir = temp.path;
  try {
    await fs.promises.symlink(path.join(deployDir, 'nginx'), path.join(dir, 'cgi-runner'));
    let rendered: string[];
    if (options.templates) {
      const staging = await mkdirShared(path.join(dir, 'templates'));
      for (const t of options.templates) await fs.promises.copyFile(t, path.join(staging, path.basename(t)));
      rendered = await renderTemplateDir(staging, path.join(dir, 'conf.d'), options.vars);
    } else {
      rendered = await renderTemplateDir(path.join(deployDir, 'nginx/templates'), path.join(dir, 'conf.d'), options.vars);
    }
    const isRoot = process.getuid?.() === 0;
    // What the image's /etc/nginx/nginx.conf does, with every path under DIR.
    const main = `daemon off;
${isRoot ? 'user root;\n' : ''}worker_processes ${options.workerProcesses ?? 1};
pid ${dir}/nginx.pid;
error_log ${dir}/error.log notice;
events { worker_connections 1024; }
http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log ${dir}/access.log combined;
    ${nginxTempPaths(dir).split('\n').join('\n    ')}
    include conf.d/*.conf;
}
`;
    const nginx = await startNginx({ dir, fullConfig: main, workerProcesses: options.workerProcesses });
    return {
      nginx,
      dir,
      rendered,
      async stop() {
        await nginx.stop();
        await temp.cleanup();
      },
    };
  } catch (e) {
    await temp.cleanup();
    throw e;
  }
}

export interface DeployApache {
  readonly process: ManagedProcess;
  readonly dir: string;
  /** stderr: the error log (ErrorLog /proc/self/fd/2). */
  errorLog(): string;
  /** Error log lines at level error or worse. */
  errors(): string[];
  /** stdout: the access log (CustomLog /proc/self/fd/1). */
  accessLog(): string;
  stop(): Promise<void>;
}

/**
 * Debian's apache2 run with deploy/apache/httpd.conf, in a ServerRoot laid out as the httpd image's:
 * modules/ (Debian's modules), logs/, and conf/cgi-runner (deploy/apache itself).
 */
export async function startDeployApache(options: { env: Record<string, string>; port: number; binary?: string }): Promise<DeployApache> {
  const temp = await makeTempDir('deploy-apache-');
  const dir = temp.path;
  try {
    await fs.promises.symlink(APACHE_MODULES_DIR, path.join(dir, 'modules'));
    await mkdirShared(path.join(dir, 'logs'));
    await mkdirShared(path.join(dir, 'conf'));
    await fs.promises.symlink(path.join(deployDir, 'apache'), path.join(dir, 'conf/cgi-runner'));
    const env = { PATH: process.env.PATH ?? '/usr/bin:/bin', LANG: 'C', ...options.env };
    // httpd.conf logs to /proc/self/fd/1 and 2, as containers do. Those cannot be opened when they are
    // sockets (what a spawned child's stdio is), so the shell points them at files and execs httpd.
    const outFile = path.join(dir, 'logs/stdout');
    const errFile = path.join(dir, 'logs/stderr');
    const proc = await startProcess({
      name: 'apache',
      command: '/bin/sh',
      args: ['-c', 'out=$1 err=$2; shift 2; exec "$@" >>"$out" 2>>"$err"', 'sh', outFile, errFile, options.binary ?? '/usr/sbin/apache2', '-d', dir, '-f', 'conf/cgi-runner/httpd.conf', '-DFOREGROUND'],
      cwd: dir,
      env,
    });
    const read = (file: string) => {
      try {
        return fs.readFileSync(file, 'utf8');
      } catch {
        return '';
      }
    };
    let finalError: string | undefined;
    let finalAccess: string | undefined;
    const errorLog = () => finalError ?? read(errFile);
    await waitUntilReady(
      proc,
      (signal) => waitForPort(options.port, '127.0.0.1', 10_000, signal),
      () => errorLog().split('\n').slice(-20).join('\n'),
    );
    return {
      process: proc,
      dir,
      errorLog,
      errors: () => errorLog().split('\n').filter((line) => /\[[\w.]*:(error|crit|alert|emerg)\]/.test(line)),
      accessLog: () => finalAccess ?? read(outFile),
      async stop() {
        await stopProcess(proc, 'SIGTERM', 5000);
        finalError = errorLog();
        finalAccess = read(outFile);
        await temp.cleanup();
      },
    };
  } catch (e) {
    await temp.cleanup();
    throw e;
  }
}

/** A directory that other users (Apache's children, nginx workers) may enter, for sockets. */
export async function socketDir(prefix = 'deploy-sock-'): Promise<TempDir> {
  return makeTempDir(prefix);
}

/**
 * The responder's side of its open connections: ESTABLISHED TCP connections to the port of
 * "host:port", or connected unix sockets bound to a socket path (accepted sockets carry the path in
 * /proc/net/unix, the web server's side does not). Connections that outlive their request are reuse.
 */
export function serverConnections(address: string): number {
  const read = (file: string) => {
    try {
      return fs.readFileSync(file, 'utf8').split('\n').slice(1);
    } catch {
      return [];
    }
  };
  if (address.startsWith('/')) {
    // Num RefCount Protocol Flags Type St Inode Path; St 03 is SS_CONNECTED (the listener is 01).
    return read('/proc/net/unix').filter((line) => {
      const f = line.trim().split(/\s+/);
      return f[7] === address && f[5] === '03';
    }).length;
  }
  const port = Number(address.slice(address.lastIndexOf(':') + 1));
  let count = 0;
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    for (const line of read(file)) {
      const f = line.trim().split(/\s+/);
      if (f.length > 3 && parseInt(f[1]!.split(':')[1]!, 16) === port && f[3] === '01') count++;
    }
  }
  return count;
}
