// Process-wide logging: access lines on stdout (combined log format or JSON), diagnostics on stderr.

export type LogFormat = 'combined' | 'json';

let format: LogFormat = 'combined';

export function setLogFormat(next: LogFormat): void {
  if (next !== 'combined' && next !== 'json') throw new TypeError(`unknown log format ${JSON.stringify(next)} (combined or json)`);
  format = next;
}

export function getLogFormat(): LogFormat {
  return format;
}

export interface AccessEntry {
  remoteAddr?: string;
  remoteUser?: string;
  method: string;
  /** The request target as the client sent it (path and query). */
  uri: string;
  protocol?: string;
  status: number;
  bytes: number;
  referer?: string;
  userAgent?: string;
  /** Milliseconds from the start of the request to its end. */
  durationMs?: number;
  /** The FastCGI request id, or another id that ties the line to error lines. */
  requestId?: string | number;
  /** The script or app that served the request. */
  target?: string;
}

const months = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
let cachedSecond = -1;
let cachedStamp = '';

/** Apache's %t: [10/Oct/2000:13:55:36 +0000]. Cached per second because it is formatted on every request. */
export function clfTimestamp(now = Date.now()): string {
  const second = Math.floor(now / 1000);
  if (second !== cachedSecond) {
    const d = new Date(second * 1000);
    const pad = (n: number) => (n < 10 ? '0' + n : String(n));
    cachedStamp = `[${pad(d.getUTCDate())}/${months[d.getUTCMonth()]}/${d.getUTCFullYear()}:${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())} +0000]`;
    cachedSecond = second;
  }
  return cachedStamp;
}

// Quotes are escaped as Apache does, so a hostile User-Agent cannot forge extra fields or lines.
// Most values need nothing escaped: one test then, rather than two replacing passes on every request.
const needsEscape = /[\\"\x00-\x1f\x7f]/;
function quoteField(value: string | undefined): string {
  if (!value) return '"-"';
  if (!needsEscape.test(value)) return '"' + value + '"';
  return '"' + value.replace(/[\\"]/g, (c) => '\\' + c).replace(/[\x00-\x1f\x7f]/g, (c) => '\\x' + c.charCodeAt(0).toString(16).padStart(2, '0')) + '"';
}

/** One line in the combined log format: %h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-agent}i". */
export function formatCombined(entry: AccessEntry, now = Date.now()): string {
  const request = `${entry.method} ${entry.uri} ${entry.protocol ?? 'HTTP/1.1'}`;
  return `${entry.remoteAddr || '-'} - ${entry.remoteUser || '-'} ${clfTimestamp(now)} ${quoteField(request)} ${entry.status} ${entry.bytes > 0 ? entry.bytes : '-'} ${quoteField(entry.referer)} ${quoteField(entry.userAgent)}`;
}

export function formatAccessJson(entry: AccessEntry, now = Date.now()): string {
  return JSON.stringify({ time: new Date(now).toISOString(), type: 'access', ...entry });
}

// Access lines are batched into one write per tick: a write per request is a syscall per request.
let pending: string[] = [];
let flushScheduled = false;
function flushAccess(): void {
  flushScheduled = false;
  if (pending.length === 0) return;
  const lines = pending;
  pending = [];
  process.stdout.write(lines.join('\n') + '\n');
}

export function logAccess(entry: AccessEntry): void {
  pending.push(format === 'json' ? formatAccessJson(entry) : formatCombined(entry));
  if (!flushScheduled) {
    flushScheduled = true;
    setImmediate(flushAccess);
  }
}
// A process.exit() in the same turn must not lose the batch (stdout to a pipe or file is synchronous).
process.on('exit', flushAccess);
// A reader of the logs that goes away (EPIPE on a pipe) must not take the server with it: its
// lines are lost, the requests are not.
for (const stream of [process.stdout, process.stderr]) stream.on('error', () => {});

export interface ErrorFields {
  requestId?: string | number;
  target?: string;
  [key: string]: unknown;
}

/** A diagnostic line on stderr. The message carries its own prefix (`fastcgi: …`, `cgi: …`). */
export function logError(message: string, fields: ErrorFields = {}): void {
  if (format === 'json') {
    process.stderr.write(JSON.stringify({ time: new Date().toISOString(), type: 'error', message, ...fields }) + '\n');
    return;
  }
  const tags: string[] = [];
  if (fields.target !== undefined) tags.push(String(fields.target));
  if (fields.requestId !== undefined) tags.push(`request ${fields.requestId}`);
  for (const [key, value] of Object.entries(fields)) {
    if (key !== 'target' && key !== 'requestId' && value !== undefined) tags.push(`${key}=${String(value)}`);
  }
  process.stderr.write(`${new Date().toISOString()} ${message}${tags.length ? ` [${tags.join(', ')}]` : ''}\n`);
}

export function logInfo(message: string): void {
  if (format === 'json') process.stderr.write(JSON.stringify({ time: new Date().toISOString(), type: 'info', message }) + '\n');
  else process.stderr.write(`${new Date().toISOString()} ${message}\n`);
}
