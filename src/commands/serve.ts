// `cgi-runner serve`: an HTTP/1.1 server that runs the executable files of a directory as CGI scripts under /cgi-bin/, a fresh process per request (RFC 3875).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { intFlag, optionalIntFlag, type Command } from '../command.ts';
import { CgiHost } from '../cgi/host.ts';
import { scriptDirectory } from '../cgi/resolve.ts';
import type { SpawnerKind } from '../cgi/spawner.ts';
import { cgiRoute } from '../http/cgi-route.ts';
import { createFastCGIRoutes, type FastCGIRoutes } from '../http/fcgi-route.ts';
import { createHttpFront, type HttpFront } from '../http/server.ts';
import { setSpoolBase } from '../http/spool.ts';
import { logError, logInfo } from '../log.ts';

const spawnerDescription = {
  native: 'the runner itself (clone and execve, no fork)',
  helper: 'the spawner helper (python3, posix_spawn)',
  node: 'the runner itself (child_process, which forks)',
} as const;

export interface ServeOptions {
  port: number;
  host: string;
  cgiDir: string;
  /** Seconds a script may run. */
  timeout: number;
  /** Seconds a graceful stop waits for in-flight requests before killing what is left. Default: timeout. */
  shutdownTimeout?: number;
  maxBody: number;
  maxScripts: number;
  /** Requests waiting for a script slot; more get 503 at once. Default 8 × maxScripts. */
  queue?: number;
  /** Seconds a client may take to send its request head (slowloris). Default 20. */
  headerTimeout?: number;
  /** Largest request head in bytes; larger gets 431. Default 16384. */
  maxHeaderSize?: number;
  /** Where chunked request bodies over 1 MiB are spooled. Default: the system temporary directory. */
  spoolDir?: string;
  passAuth?: boolean;
  followSymlinks?: boolean;
  isindexArgs?: boolean;
  /** Seconds between SIGTERM and SIGKILL for a script being stopped. Default 2. */
  killGrace?: number;
  /** How scripts are started (default 'auto': the native addon when it is built, else the Python helper when python3 runs, else Node's spawn). */
  spawner?: SpawnerKind;
  /** Apps served at /fcgi/NAME by persistent responder processes (default ./fcgi; a missing directory serves nothing). */
  fcgiDir?: string;
  /** Processes per fcgi/ app. Default 1. */
  fcgiProcs?: number;
  /** PREFIX=ADDRESS: URL prefixes sent to external FastCGI servers. */
  fcgiPass?: string[];
  /** Document root for --fcgi-pass (SCRIPT_FILENAME = ROOT + SCRIPT_NAME). Default: the working directory. */
  fcgiRoot?: string;
}

export interface RunningServer {
  /** e.g. http://127.0.0.1:8080/cgi-bin/ */
  readonly url: string;
  readonly port: number;
  readonly front: HttpFront;
  readonly host: CgiHost;
  /** The /fcgi/ app processes and the --fcgi-pass upstreams. */
  readonly fastcgi: FastCGIRoutes;
  /** Finishes in-flight requests for up to deadlineMs, then kills what is left. */
  stop(deadlineMs?: number): Promise<void>;
}

const defaultMaxScripts = 4 * os.availableParallelism();
const packageVersion = (() => {
  try {
    const pkg = path.join(path.dirname(fileURLToPath(import.meta.url)), '../../package.json');
    return (JSON.parse(fs.readFileSync(pkg, 'utf8')) as { version?: string }).version ?? '0';
  } catch {
    return '0';
  }
})();

export async function startServe(options: ServeOptions): Promise<RunningServer> {
  const scripts = scriptDirectory(options.cgiDir, '/cgi-bin', options.followSymlinks);
  setSpoolBase(options.spoolDir);
  const host = await CgiHost.start({
    maxScripts: options.maxScripts,
    queueLimit: options.queue,
    timeoutMs: options.timeout * 1000,
    killGraceMs: (options.killGrace ?? 2) * 1000,
    spawner: options.spawner,
  });
  const fastcgi = createFastCGIRoutes({
    fcgiDir: options.fcgiDir ?? './fcgi',
    procs: options.fcgiProcs ?? 1,
    pass: options.fcgiPass ?? [],
    root: options.fcgiRoot,
    timeoutSeconds: options.timeout,
    serverSoftware: `cgi-runner/${packageVersion}`,
    maxBody: options.maxBody,
    passAuth: options.passAuth,
  });
  const front = createHttpFront({
    headersTimeoutMs: (options.headerTimeout ?? 20) * 1000,
    maxHeaderSize: options.maxHeaderSize,
    routes: [
      ...fastcgi.routes,
      cgiRoute({
        host,
        scripts,
        // Where /cgi-bin/ sits: PATH_TRANSLATED maps PATH_INFO below it (RFC 3875 §4.1.6).
        documentRoot: path.dirname(scripts.dir),
        serverSoftware: `cgi-runner/${packageVersion}`,
        maxBody: options.maxBody,
        passAuth: options.passAuth,
        isindexArgs: options.isindexArgs,
        path: process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin',
      }),
    ],
  });
  let address;
  try {
    address = await front.listen(options.port, options.host);
  } catch (err) {
    await Promise.all([host.close(), fastcgi.stop()]);
    throw err;
  }
  const shownHost = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  let stopping: Promise<void> | undefined;
  return {
    url: `http://${shownHost}:${address.port}/cgi-bin/`,
    port: address.port,
    front,
    host,
    fastcgi,
    stop(deadlineMs = (options.shutdownTimeout ?? options.timeout) * 1000) {
      // In-flight requests finish first (their app processes still run), then the apps stop.
      stopping ??= front.stop(deadlineMs, async () => {
        await Promise.all([host.close(), fastcgi.stop()]);
      });
      return stopping;
    },
  };
}

export const serveCommand: Command = {
  name: 'serve',
  summary: 'HTTP/1.1 server running the executable files of --cgi-dir as CGI scripts at /cgi-bin/, a fresh process per request (RFC 3875).',
  details: [
    'Scripts get a clean environment: PATH and the CGI variables. Their stderr goes to ours, each line prefixed with the script\'s name.',
    'Scripts named nph-* write the whole HTTP response themselves.',
    'SIGTERM or SIGINT: stop accepting, let in-flight requests finish for up to --shutdown-timeout seconds, then kill what is left.',
  ].join('\n'),
  flags: {
    port: { type: 'string', valueName: 'PORT', default: '8080', description: 'TCP port to listen on (0: any free port)' },
    host: { type: 'string', valueName: 'ADDRESS', default: '127.0.0.1', description: 'address to listen on' },
    'cgi-dir': { type: 'string', valueName: 'DIR', default: './cgi-bin', description: 'directory whose executable files are served at /cgi-bin/' },
    timeout: { type: 'string', valueName: 'SECONDS', default: '30', description: 'kill a script (and its process group) still running after this' },
    'shutdown-timeout': { type: 'string', valueName: 'SECONDS', description: 'how long SIGTERM waits for in-flight requests before killing what is left (default: --timeout)' },
    'max-body': { type: 'string', valueName: 'BYTES', default: String(1024 * 1024 * 1024), description: 'larger request bodies get 413' },
    'max-scripts': { type: 'string', valueName: 'N', default: String(defaultMaxScripts), description: 'scripts running at once; more requests wait in a bounded queue, then get 503' },
    queue: { type: 'string', valueName: 'N', description: 'requests waiting for a script slot (up to --timeout); more get 503 at once (default: 8 × --max-scripts)' },
    'header-timeout': { type: 'string', valueName: 'SECONDS', default: '20', description: 'a client that has not sent its whole request head by then gets 408 and is cut off (slowloris)' },
    'max-header-size': { type: 'string', valueName: 'BYTES', default: '16384', description: 'larger request heads (request line and headers) get 431' },
    'spool-dir': { type: 'string', valueName: 'DIR', description: 'where chunked request bodies over 1 MiB wait for their script (default: the system temporary directory); when it is full, 507' },
    'pass-auth': { type: 'boolean', description: 'pass the Authorization header to scripts (HTTP_AUTHORIZATION)' },
    'follow-symlinks': { type: 'boolean', description: 'run symlinks whose target is outside --cgi-dir' },
    'isindex-args': { type: 'boolean', description: 'a query without "=" becomes command-line arguments (RFC 3875 §4.4; off: CVE-2012-1823)' },
    'fcgi-dir': { type: 'string', valueName: 'DIR', default: './fcgi', description: 'apps served at /fcgi/NAME (DIR/NAME.ts), each by persistent `fcgi` processes started on first use' },
    'fcgi-procs': { type: 'string', valueName: 'N', default: '1', description: 'processes per fcgi/ app' },
    'fcgi-pass': { type: 'string', valueName: 'PREFIX=ADDRESS', multiple: true, description: 'send a URL prefix to an external FastCGI server (php-fpm), e.g. /php=127.0.0.1:9000' },
    'fcgi-root': { type: 'string', valueName: 'DIR', description: 'document root for --fcgi-pass: SCRIPT_FILENAME = DIR + the URL path, as nginx\'s fastcgi.conf (default: the working directory)' },
  },
  async run(values) {
    const running = await startServe({
      port: intFlag(values, 'port', 0),
      host: values.host as string,
      cgiDir: values['cgi-dir'] as string,
      timeout: intFlag(values, 'timeout', 1),
      shutdownTimeout: optionalIntFlag(values, 'shutdown-timeout', 0),
      maxBody: intFlag(values, 'max-body', 0),
      maxScripts: intFlag(values, 'max-scripts', 1),
      queue: optionalIntFlag(values, 'queue', 0),
      headerTimeout: intFlag(values, 'header-timeout', 1),
      maxHeaderSize: intFlag(values, 'max-header-size', 1024),
      spoolDir: values['spool-dir'] as string | undefined,
      passAuth: values['pass-auth'] === true,
      followSymlinks: values['follow-symlinks'] === true,
      isindexArgs: values['isindex-args'] === true,
      fcgiDir: values['fcgi-dir'] as string,
      fcgiProcs: intFlag(values, 'fcgi-procs', 1),
      fcgiPass: (values['fcgi-pass'] as string[] | undefined) ?? [],
      fcgiRoot: values['fcgi-root'] as string | undefined,
    }).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'EADDRINUSE' || err.code === 'EACCES' || err.message.startsWith('cgi:')) {
        throw Object.assign(new Error(err.message), { code: 'USAGE' });
      }
      throw err;
    });
    // One write, so that whoever waits for the banner sees both lines at once.
    let banner = `cgi-runner: serving ${path.resolve(values['cgi-dir'] as string)} at ${running.url}\n`;
    if (running.fastcgi.fcgiDir) banner += `cgi-runner: serving the apps of ${running.fastcgi.fcgiDir} at ${running.url.replace(/\/cgi-bin\/$/, '/fcgi/')}NAME\n`;
    process.stdout.write(banner);
    logInfo(`cgi: scripts are started by ${spawnerDescription[running.host.spawnerKind]}; at most ${running.host.maxScripts} at once`);
    await new Promise<void>((resolve) => {
      let signals = 0;
      const onSignal = (signal: NodeJS.Signals) => {
        if (++signals > 1) {
          // A second signal: stop waiting for in-flight requests.
          logError(`cgi: ${signal} again, stopping now`);
          void running.host.close().finally(() => process.exit(1));
          return;
        }
        logInfo(`cgi: ${signal}: finishing ${running.front.inFlight} request(s), then stopping`);
        void running.stop().then(resolve, (err) => {
          logError(`cgi: stopping failed: ${(err as Error).message}`);
          resolve();
        });
      };
      process.on('SIGTERM', onSignal);
      process.on('SIGINT', onSignal);
    });
    return 0;
  },
};
