// `cgi-runner fcgi --check ADDRESS`: a health check for Docker HEALTHCHECK, systemd and load balancers.
// It asks GET_VALUES, then sends one GET request and succeeds on a 2xx or 3xx answer.
import net from 'node:net';
import { describeTarget, parseListenAddress } from '../listen.ts';
import { RecordDecoder } from './decoder.ts';
import { decodePairs, encodePairs } from './pairs.ts';
import {
  FCGI_END_REQUEST,
  FCGI_GET_VALUES,
  FCGI_GET_VALUES_RESULT,
  FCGI_MAX_CONNS,
  FCGI_MAX_REQS,
  FCGI_MPXS_CONNS,
  FCGI_NULL_REQUEST_ID,
  FCGI_PARAMS,
  FCGI_REQUEST_COMPLETE,
  FCGI_RESPONDER,
  FCGI_STDERR,
  FCGI_STDIN,
  FCGI_STDOUT,
  FCGI_UNKNOWN_TYPE,
} from './protocol.ts';
import { decodeEndRequest, encodeBeginRequest, encodeRecord, encodeStream } from './record.ts';

export interface HealthCheckOptions {
  /** host:port, a unix socket path or unix:/path. */
  address: string;
  /** The request target of the GET request, path and query; default "/". */
  path?: string;
  /** For the whole check: connect, GET_VALUES and the request. Default 5000 ms. */
  timeoutMs?: number;
  /** HTTP_HOST and SERVER_NAME of the request; default "localhost". */
  host?: string;
  /**
   * DOCUMENT_ROOT, and SCRIPT_FILENAME = root + path, as nginx's fastcgi.conf sends them: what
   * `fcgi --cgi-dir`, fcgiwrap and php-fpm need to find a script. Not sent without it.
   */
  documentRoot?: string;
}

export interface HealthCheckResult {
  ok: boolean;
  /** The HTTP status the app answered with, when it answered. */
  status?: number;
  /** The GET_VALUES answers (FCGI_MAX_CONNS, FCGI_MAX_REQS, FCGI_MPXS_CONNS, as far as the app knows them). */
  values: Record<string, string>;
  durationMs: number;
  /** One line saying what happened, for a person reading a health log. */
  message: string;
}

const PROTOCOL_STATUS = ['REQUEST_COMPLETE', 'CANT_MPX_CONN', 'OVERLOADED', 'UNKNOWN_ROLE'];

/** The params of the probe request, as nginx's fastcgi.conf would send them for `GET path`. */
export function healthCheckParams(path: string, host: string, documentRoot?: string): Record<string, string> {
  const query = path.indexOf('?');
  const scriptName = query === -1 ? path : path.slice(0, query);
  const files: Record<string, string> = documentRoot
    ? { DOCUMENT_ROOT: documentRoot, SCRIPT_FILENAME: documentRoot.replace(/\/+$/, '') + scriptName }
    : {};
  return {
    ...files,
    GATEWAY_INTERFACE: 'CGI/1.1',
    SERVER_SOFTWARE: 'cgi-runner-check',
    SERVER_PROTOCOL: 'HTTP/1.1',
    SERVER_NAME: host,
    SERVER_PORT: '80',
    SERVER_ADDR: '127.0.0.1',
    REMOTE_ADDR: '127.0.0.1',
    REMOTE_PORT: '0',
    REQUEST_METHOD: 'GET',
    REQUEST_SCHEME: 'http',
    REQUEST_URI: path,
    DOCUMENT_URI: scriptName,
    SCRIPT_NAME: scriptName,
    QUERY_STRING: query === -1 ? '' : path.slice(query + 1),
    CONTENT_LENGTH: '',
    CONTENT_TYPE: '',
    HTTP_HOST: host,
    HTTP_USER_AGENT: 'cgi-runner-check',
  };
}

/** Reads the status of a CGI header block: `Status:` if present, 302 for a Location alone, else 200. */
function statusOf(stdout: Buffer): { status: number; reason: string } | undefined {
  const crlf = stdout.indexOf('\r\n\r\n');
  const lf = stdout.indexOf('\n\n');
  const end = crlf !== -1 && (lf === -1 || crlf < lf) ? crlf : lf;
  if (end === -1) return undefined;
  let status: { status: number; reason: string } | undefined;
  let location = false;
  for (const line of stdout.subarray(0, end).toString('latin1').split(/\r?\n/)) {
    const colon = line.indexOf(':');
    if (colon <= 0) continue;
    const name = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    if (name === 'status') {
      const m = /^(\d{3})\s*(.*)$/.exec(value);
      if (m) status = { status: Number(m[1]), reason: m[2] ?? '' };
    } else if (name === 'location') location = true;
  }
  return status ?? (location ? { status: 302, reason: 'Found' } : { status: 200, reason: 'OK' });
}

/** Runs the check; never throws for a failed check, only reports it. */
export async function checkResponder(options: HealthCheckOptions): Promise<HealthCheckResult> {
  const started = performance.now();
  const path = options.path ?? '/';
  const timeoutMs = options.timeoutMs ?? 5000;
  const values: Record<string, string> = {};
  const result = (ok: boolean, message: string, status?: number): HealthCheckResult => ({
    ok,
    status,
    values,
    durationMs: Math.round(performance.now() - started),
    message,
  });

  let where: string;
  let connectTo: net.NetConnectOpts;
  try {
    const target = parseListenAddress(options.address);
    if (target.kind === 'fd') return result(false, `cannot check ${options.address}: give a host:port or a socket path, not a file descriptor`);
    where = describeTarget(target);
    connectTo = target.kind === 'tcp' ? { host: target.host, port: target.port } : { path: target.path };
  } catch (err) {
    return result(false, (err as Error).message);
  }
  if (!path.startsWith('/')) return result(false, `the check path must start with "/", got ${JSON.stringify(path)}`);

  return new Promise<HealthCheckResult>((resolve) => {
    const socket = net.connect(connectTo);
    let phase: 'connect' | 'values' | 'request' = 'connect';
    let settled = false;
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    const finish = (r: HealthCheckResult) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(r);
    };
    const timer = setTimeout(() => {
      const doing = phase === 'connect' ? 'connecting' : phase === 'values' ? 'waiting for GET_VALUES_RESULT' : `waiting for the answer to GET ${path}`;
      finish(result(false, `${where}: no answer within ${timeoutMs} ms while ${doing}`));
    }, timeoutMs);

    const decoder = new RecordDecoder((type, requestId, content) => {
      if (requestId === FCGI_NULL_REQUEST_ID) {
        if (type === FCGI_GET_VALUES_RESULT && phase === 'values') {
          Object.assign(values, decodePairs(content));
          phase = 'request';
          // No FCGI_KEEP_CONN: the app closes the connection after this one request.
          socket.write(
            Buffer.concat([
              encodeBeginRequest(1, FCGI_RESPONDER, 0),
              encodeStream(FCGI_PARAMS, 1, encodePairs(healthCheckParams(path, options.host ?? 'localhost', options.documentRoot))),
              encodeRecord(FCGI_PARAMS, 1),
              encodeRecord(FCGI_STDIN, 1),
            ]),
          );
        } else if (type === FCGI_UNKNOWN_TYPE) {
          finish(result(false, `${where}: the app does not understand GET_VALUES (answered UNKNOWN_TYPE)`));
        } else {
          finish(result(false, `${where}: unexpected management record of type ${type}`));
        }
        return;
      }
      if (requestId !== 1 || phase !== 'request') return finish(result(false, `${where}: a record for request ${requestId} that was never sent`));
      if (type === FCGI_STDOUT) stdout.push(Buffer.from(content));
      else if (type === FCGI_STDERR) stderr.push(Buffer.from(content));
      else if (type === FCGI_END_REQUEST) {
        const { appStatus, protocolStatus } = decodeEndRequest(content);
        if (protocolStatus !== FCGI_REQUEST_COMPLETE) {
          return finish(result(false, `${where}: request refused with FCGI_${PROTOCOL_STATUS[protocolStatus] ?? protocolStatus}`));
        }
        const out = Buffer.concat(stdout);
        const head = statusOf(out);
        const errText = Buffer.concat(stderr).toString('utf8').trim();
        const detail = `${errText ? `; stderr: ${errText.split('\n')[0]}` : ''}${appStatus ? `; app status ${appStatus}` : ''}`;
        if (!head) return finish(result(false, `${where}: GET ${path}: no CGI header block in ${out.length} bytes of output${detail}`));
        const ms = Math.round(performance.now() - started);
        const limits = Object.entries(values)
          .map(([k, v]) => `${k}=${v}`)
          .join(', ');
        const line = `${where}: GET ${path}: ${head.status} ${head.reason} in ${ms} ms${limits ? ` (${limits})` : ''}${detail}`;
        finish(result(head.status >= 200 && head.status < 400, line, head.status));
      }
    });

    socket.on('connect', () => {
      phase = 'values';
      socket.write(encodeRecord(FCGI_GET_VALUES, FCGI_NULL_REQUEST_ID, encodePairs([[FCGI_MAX_CONNS, ''], [FCGI_MAX_REQS, ''], [FCGI_MPXS_CONNS, '']])));
    });
    socket.on('data', (chunk: Buffer) => {
      try {
        decoder.push(chunk);
      } catch (err) {
        finish(result(false, `${where}: ${(err as Error).message}`));
      }
    });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      const what = phase === 'connect' ? 'cannot connect' : 'connection failed';
      finish(result(false, `${where}: ${what}: ${err.message}`));
    });
    socket.on('close', () => {
      const doing = phase === 'values' ? 'before answering GET_VALUES' : `before ending the answer to GET ${path}`;
      finish(result(false, `${where}: connection closed ${doing}`));
    });
  });
}

/** The `--check` entry point: prints one line and returns the exit code (0 healthy, 1 not). */
export async function runHealthCheck(options: HealthCheckOptions): Promise<number> {
  const r = await checkResponder(options);
  if (r.ok) process.stdout.write(`healthy: ${r.message}\n`);
  else process.stderr.write(`unhealthy: ${r.message}\n`);
  return r.ok ? 0 : 1;
}
