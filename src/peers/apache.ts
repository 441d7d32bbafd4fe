// Launcher for a private Apache httpd (own httpd.conf, modules, logs and port) run in the foreground without apachectl.
import fs from 'node:fs';
import path from 'node:path';
import { freePort, waitForPort } from './ports.ts';
import { startProcess, stop as stopProcess, waitUntilReady, type ManagedProcess } from './process.ts';
import { makeTempDir, mkdirShared, type TempDir } from './tempdir.ts';

export const APACHE_MODULES_DIR = '/usr/lib/apache2/modules';

export interface ApacheContext {
  port: number;
  dir: string;
}

export interface ApacheOptions {
  /** Modules to load besides the MPM and authz_core, by short name: "proxy_fcgi", "cgid", "fcgid", "alias"... */
  modules?: readonly string[];
  /** Directives appended to httpd.conf. In text, `{{port}}` and `{{dir}}` are replaced. */
  config?: string | ((ctx: ApacheContext) => string);
  /** "event" by default. */
  mpm?: 'event' | 'worker' | 'prefork';
  /** DocumentRoot; default DIR/htdocs (created). */
  documentRoot?: string;
  dir?: string;
  port?: number;
  /** Default "warn". */
  logLevel?: string;
  /** Write access.log (default true); benchmarks turn it off, as they do nginx's. */
  accessLog?: boolean;
  timeoutMs?: number;
  binary?: string;
}

export interface ApacheServer {
  readonly port: number;
  readonly url: string;
  readonly dir: string;
  readonly documentRoot: string;
  readonly confPath: string;
  readonly errorLogPath: string;
  readonly accessLogPath: string;
  readonly process: ManagedProcess;
  readonly pid: number;
  errorLog(): string;
  /** Error log lines at level error, crit, alert or emerg. */
  errors(): string[];
  stop(): Promise<void>;
}

// Modules that others cannot load without; loaded first, in this order.
const DEPENDENCIES: Record<string, readonly string[]> = {
  proxy_balancer: ['proxy', 'slotmem_shm'],
  lbmethod_byrequests: ['proxy', 'proxy_balancer'],
  lbmethod_bybusyness: ['proxy', 'proxy_balancer'],
  authnz_fcgi: ['authn_core'],
};

/** Expands short names into a load order that satisfies dependencies, without duplicates. */
export function apacheModuleList(mpm: string, modules: readonly string[]): string[] {
  const order: string[] = [];
  const add = (name: string) => {
    if (order.includes(name)) return;
    const deps = DEPENDENCIES[name] ?? (name.startsWith('proxy_') ? ['proxy'] : []);
    for (const dep of deps) add(dep);
    order.push(name);
  };
  add(`mpm_${mpm}`);
  add('authz_core');
  for (const m of modules) {
    const name = m.replace(/^mod_/, '').replace(/(_module|\.so)$/, '');
    // unixd, so, log_config, logio, version, watchdog and core are compiled into Debian's apache2.
    if (['unixd', 'so', 'log_config', 'logio', 'version', 'watchdog', 'core', 'http'].includes(name)) continue;
    add(name);
  }
  return order;
}

/** "LoadModule x_module /usr/lib/apache2/modules/mod_x.so" for each module; throws if a .so is missing. */
export function loadModuleLines(modules: readonly string[]): string {
  return modules
    .map((name) => {
      const file = path.join(APACHE_MODULES_DIR, `mod_${name}.so`);
      if (!fs.existsSync(file)) throw new Error(`apache: module ${name} not found at ${file}`);
      return `LoadModule ${name}_module ${file}`;
    })
    .join('\n');
}

const SERIOUS = /\[[\w.]*:(error|crit|alert|emerg)\]/;

/** The lines of an Apache error log at level error or worse. */
export function apacheErrorLogProblems(text: string): string[] {
  return text.split('\n').filter((line) => SERIOUS.test(line));
}

function readFile(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return '';
  }
}

/** Starts /usr/sbin/apache2 -f httpd.conf -DFOREGROUND and resolves once it accepts connections. */
export async function startApache(options: ApacheOptions = {}): Promise<ApacheServer> {
  const temp: TempDir | undefined = options.dir ? undefined : await makeTempDir('apache-');
  const dir = options.dir ?? temp!.path;
  await mkdirShared(dir);
  // run/ holds the cgid socket and mutexes; www-data children must be able to enter it.
  await mkdirShared(path.join(dir, 'run'));
  const documentRoot = options.documentRoot ?? (await mkdirShared(path.join(dir, 'htdocs')));
  for (let attempt = 1; ; attempt++) {
    const port = options.port ?? (await freePort());
    try {
      return await launch(options, { port, dir }, documentRoot, temp);
    } catch (e) {
      const retry = options.port === undefined && attempt < 3 && /could not bind|Address already in use/.test((e as Error).message);
      if (!retry) {
        await temp?.cleanup();
        throw e;
      }
    }
  }
}

async function launch(options: ApacheOptions, ctx: ApacheContext, documentRoot: string, temp: TempDir | undefined): Promise<ApacheServer> {
  const { dir, port } = ctx;
  const modules = apacheModuleList(options.mpm ?? 'event', options.modules ?? []);
  const confPath = path.join(dir, 'httpd.conf');
  const errorLogPath = path.join(dir, 'error.log');
  const accessLogPath = path.join(dir, 'access.log');
  const pidPath = path.join(dir, 'run', 'apache.pid');
  const extra = typeof options.config === 'function' ? options.config(ctx) : (options.config ?? '');
  // Apache refuses to serve requests as root, and a non-root parent cannot switch users at all.
  const user = process.getuid?.() === 0 ? 'User www-data\nGroup www-data\n' : '';
  const mime = modules.includes('mime') && fs.existsSync('/etc/mime.types') ? 'TypesConfig /etc/mime.types\n' : '';
  const conf = `ServerRoot "${dir}"
ServerName 127.0.0.1
Listen 127.0.0.1:${port}
PidFile ${pidPath}
DefaultRuntimeDir ${path.join(dir, 'run')}
ErrorLog ${errorLogPath}
LogLevel ${options.logLevel ?? 'warn'}
LogFormat "%h %l %u %t \\"%r\\" %>s %b" common
${options.accessLog === false ? '' : `CustomLog ${accessLogPath} common`}
${loadModuleLines(modules)}
${user}${mime}DocumentRoot "${documentRoot}"
<IfModule cgid_module>
ScriptSock ${path.join(dir, 'run', 'cgid.sock')}
</IfModule>
<IfModule fcgid_module>
FcgidIPCDir ${path.join(dir, 'run', 'fcgid')}
FcgidProcessTableFile ${path.join(dir, 'run', 'fcgid_shm')}
</IfModule>

${extra.replaceAll('{{port}}', String(port)).replaceAll('{{dir}}', dir)}
`;
  await fs.promises.writeFile(confPath, conf);
  await fs.promises.rm(pidPath, { force: true });
  const logStart = fs.existsSync(errorLogPath) ? fs.statSync(errorLogPath).size : 0;

  const binary = options.binary ?? '/usr/sbin/apache2';
  // A clean environment: Debian's envvars (APACHE_RUN_DIR...) are not needed by this config,
  // and inheriting ours would leak into CGI scripts through PassEnv.
  const env = { PATH: process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin', LANG: 'C' };
  const proc = await startProcess({ name: 'apache', command: binary, args: ['-f', confPath, '-DFOREGROUND'], cwd: dir, env });
  await waitUntilReady(
    proc,
    (signal) => waitForPort(port, '127.0.0.1', options.timeoutMs ?? 10_000, signal),
    () => readFile(errorLogPath).slice(logStart).trim().split('\n').slice(-20).join('\n'),
  );

  let finalLog: string | undefined;
  const server: ApacheServer = {
    port,
    url: `http://127.0.0.1:${port}`,
    dir,
    documentRoot,
    confPath,
    errorLogPath,
    accessLogPath,
    process: proc,
    pid: proc.pid,
    errorLog: () => finalLog ?? readFile(errorLogPath),
    errors: () => apacheErrorLogProblems(server.errorLog()),
    async stop() {
      await stopProcess(proc, 'SIGTERM', 5000);
      finalLog = readFile(errorLogPath);
      await temp?.cleanup();
    },
  };
  return server;
}
