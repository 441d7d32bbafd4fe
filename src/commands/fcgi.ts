// `cgi-runner fcgi`: a FastCGI responder hosting a Fetch-style app, in one process or a node:cluster of workers.
import cluster from 'node:cluster';
import os from 'node:os';
import { intFlag, type Command } from '../command.ts';
import { Responder, defaultResponderOptions } from '../fastcgi/responder.ts';
import { startResponderServer, stopOnSignals } from '../fastcgi/server.ts';
import { loadApp } from '../handler.ts';
import { installLightweightResponse } from '../lightweight-response.ts';
import { describeTarget, inheritedListenTarget, noListenerHelp, parseListenAddress, parseSocketMode, removeStaleSocket, type ListenTarget } from '../listen.ts';
import { logError, logInfo, setLogFormat, type LogFormat } from '../log.ts';
import { runPrimary, workerCount } from '../workers.ts';
import { runHealthCheck } from '../fastcgi/health-check.ts';
import { createCgiDirApp, type CgiDirApp } from '../fastcgi/cgi-dir.ts';

type Values = Record<string, string | boolean | string[] | undefined>;

export const fcgiCommand: Command = {
  name: 'fcgi',
  summary: 'Run a FastCGI responder (FastCGI 1.0, multiplexing) for a Fetch-style app: export default { fetch(request, context) }.',
  details: [
    'ADDRESS is host:port, a unix socket path (or unix:/path), or fd:N.',
    'Without --listen the responder uses an inherited listening socket: fd 0 (spawn-fcgi, mod_fcgid, lighttpd)',
    'or fd 3 with LISTEN_FDS/LISTEN_PID (systemd socket activation).',
    'SIGTERM or SIGQUIT: stop accepting, finish in-flight requests (up to --shutdown-timeout), exit 0.',
  ].join('\n'),
  flags: {
    listen: { type: 'string', valueName: 'ADDRESS', description: 'where to listen (default: the inherited socket)' },
    app: { type: 'string', valueName: 'FILE', description: 'the app module to serve' },
    'cgi-dir': { type: 'string', valueName: 'DIR', description: 'instead of --app: run the CGI script named by SCRIPT_FILENAME, if inside DIR, per request (as fcgiwrap)' },
    'cgi-timeout': { type: 'string', valueName: 'SECONDS', default: '30', description: 'with --cgi-dir: kill a script (and its process group) still running after this' },
    'max-scripts': { type: 'string', valueName: 'N', default: String(4 * os.availableParallelism()), description: 'with --cgi-dir: scripts running at once; more wait, then get 503' },
    'pass-auth': { type: 'boolean', description: 'with --cgi-dir: pass HTTP_AUTHORIZATION to scripts' },
    workers: { type: 'string', valueName: 'N', default: '1', description: 'processes sharing the socket (node:cluster); auto: one per core' },
    'socket-mode': { type: 'string', valueName: 'MODE', default: '0660', description: 'permissions of a unix socket file' },
    'max-conns': { type: 'string', valueName: 'N', default: String(defaultResponderOptions.maxConns), description: 'connections per process (FCGI_MAX_CONNS)' },
    'max-reqs': { type: 'string', valueName: 'N', default: String(defaultResponderOptions.maxReqs), description: 'requests in flight per process (FCGI_MAX_REQS); more get FCGI_OVERLOADED' },
    'max-conn-reqs': { type: 'string', valueName: 'N', default: String(defaultResponderOptions.maxConnReqs), description: 'requests in flight on one connection; more get FCGI_OVERLOADED (0: only --max-reqs; 1 answers FCGI_MPXS_CONNS=0)' },
    'max-params': { type: 'string', valueName: 'BYTES', default: String(defaultResponderOptions.maxParamsBytes), description: 'PARAMS bytes per request' },
    'stdin-buffer': { type: 'string', valueName: 'BYTES', default: String(defaultResponderOptions.stdinHighWaterMark), description: 'request body bytes queued for the app before the socket is paused' },
    'idle-timeout': { type: 'string', valueName: 'SECONDS', default: String(defaultResponderOptions.idleTimeoutMs / 1000), description: 'close a connection idle this long (0: never)' },
    'request-timeout': { type: 'string', valueName: 'SECONDS', default: '0', description: 'abort a request running this long (0: never)' },
    'shutdown-timeout': { type: 'string', valueName: 'SECONDS', default: '30', description: 'how long a graceful stop waits for in-flight requests' },
    'log-format': { type: 'string', valueName: 'FORMAT', default: 'combined', description: 'access and error log format: combined or json' },
    'no-access-log': { type: 'boolean', description: 'do not write an access line per request' },
    check: { type: 'string', valueName: 'ADDRESS', description: 'health check, then exit: GET_VALUES and one GET request to ADDRESS; exit 0 on a 2xx/3xx answer, 1 otherwise' },
    'check-path': { type: 'string', valueName: 'PATH', default: '/', description: 'request target of the --check request' },
    'check-timeout': { type: 'string', valueName: 'SECONDS', default: '5', description: 'how long --check waits for the whole exchange' },
    'check-root': { type: 'string', valueName: 'DIR', description: 'DOCUMENT_ROOT of the --check request; SCRIPT_FILENAME is DIR + PATH (for --cgi-dir, fcgiwrap, php-fpm)' },
  },
  async run(values) {
    if (typeof values.check === 'string') {
      return runHealthCheck({
        address: values.check,
        path: values['check-path'] as string,
        timeoutMs: Number(values['check-timeout']) * 1000 || 5000,
        documentRoot: values['check-root'] as string | undefined,
      });
    }
    setLogFormat(values['log-format'] as LogFormat);
    const workers = workerCount(values.workers as string);
    const socketMode = parseSocketMode(values['socket-mode'] as string);
    const target = resolveTarget(values);
    if (cluster.isPrimary) {
      if (!values.app === !values['cgi-dir']) throw new TypeError('one of --app FILE or --cgi-dir DIR is required');
      if (target.kind === 'unix') await removeStaleSocket(target.path);
    }
    if (workers > 1 && cluster.isPrimary) {
      return runPrimary({ workers, describe: `fcgi ${describeTarget(target)}`, shutdownMs: intFlag(values, 'shutdown-timeout') * 1000 });
    }
    return runResponderProcess(values, target, socketMode);
  },
};

function resolveTarget(values: Values): ListenTarget {
  if (typeof values.listen === 'string') return parseListenAddress(values.listen);
  // A worker is not the process named in LISTEN_PID, so it takes the descriptor its primary found.
  const fromPrimary = cluster.isWorker ? process.env.CGI_RUNNER_INHERITED_FD : undefined;
  if (fromPrimary) return { kind: 'fd', fd: Number(fromPrimary), origin: 'inherited by the primary' };
  const inherited = inheritedListenTarget();
  if (!inherited) throw new TypeError(noListenerHelp);
  if (inherited.kind === 'fd' && cluster.isPrimary) process.env.CGI_RUNNER_INHERITED_FD = String(inherited.fd);
  return inherited;
}

async function runResponderProcess(values: Values, target: ListenTarget, socketMode: number): Promise<number> {
  const cgiDir = values['cgi-dir'] as string | undefined;
  const appFile = cgiDir ?? (values.app as string);
  // Before the app loads, so that every `new Response` in it is the lightweight one.
  installLightweightResponse();
  let app;
  let cgiApp: CgiDirApp | undefined;
  try {
    app = cgiDir
      ? (cgiApp = await createCgiDirApp({
          dir: cgiDir,
          timeoutMs: intFlag(values, 'cgi-timeout', 1) * 1000,
          maxScripts: intFlag(values, 'max-scripts', 1),
          passAuth: values['pass-auth'] === true,
          path: process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin',
        }))
      : await loadApp(appFile);
  } catch (err) {
    logError((err as Error).message);
    return 1;
  }
  const responder = new Responder(app, {
    maxConns: intFlag(values, 'max-conns', 1),
    maxReqs: intFlag(values, 'max-reqs', 1),
    maxConnReqs: intFlag(values, 'max-conn-reqs', 0),
    maxParamsBytes: intFlag(values, 'max-params', 1024),
    stdinHighWaterMark: intFlag(values, 'stdin-buffer', 1),
    idleTimeoutMs: intFlag(values, 'idle-timeout') * 1000,
    requestTimeoutMs: intFlag(values, 'request-timeout') * 1000,
    accessLog: !values['no-access-log'],
    target: appFile,
  });
  let server;
  try {
    server = await startResponderServer(responder, target, socketMode);
  } catch (err) {
    logError(`fcgi: cannot listen on ${describeTarget(target)}: ${(err as Error).message}`);
    return 1;
  }
  const shutdownMs = intFlag(values, 'shutdown-timeout') * 1000;
  // With --cgi-dir, scripts still running after the deadline are killed with their process groups.
  const stop = () => server.stop(shutdownMs).then(() => cgiApp?.close());
  stopOnSignals(stop, 'fcgi');
  if (!cluster.isWorker) {
    // Started by `serve` (the process manager) with an IPC channel: its closing means the runner is gone.
    if (process.channel) {
      process.once('disconnect', () => {
        logInfo('fcgi: the runner that started this process is gone, stopping');
        void stop().then(() => process.exit(0));
      });
    }
    logInfo(`fcgi: serving ${cgiDir ? `the CGI scripts of ${cgiDir}` : appFile} on ${describeTarget(target)} (pid ${process.pid})`);
  }
  return new Promise<number>(() => {}); // runs until a signal stops the process
}
