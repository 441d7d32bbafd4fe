// Runs libfcgi's `cgi-fcgi -bind -connect ADDR` as a reference FastCGI client and parses the CGI response it prints.
import { spawn } from 'node:child_process';
import { findPeer } from './availability.ts';

export interface CgiFcgiOptions {
  /** "/path/app.sock" or "host:port". */
  connect: string;
  /** FastCGI params. cgi-fcgi sends its whole environment as params, so these are all it gets. */
  params: Record<string, string>;
  /** Request body, sent as FCGI_STDIN; CONTENT_LENGTH is set from it unless given. */
  body?: string | Uint8Array;
  /** Kill cgi-fcgi after this long; default 10 s. */
  timeoutMs?: number;
  binary?: string;
}

export interface CgiResponse {
  /** From the Status header; 200 when there is none (what cgi-fcgi prints is the raw CGI output). */
  status: number;
  statusText: string;
  /** Headers in order, repeated ones kept (Set-Cookie), Status removed. */
  headerList: Array<[string, string]>;
  headers: Headers;
  body: Buffer;
  text(): string;
  /** Everything cgi-fcgi wrote to stdout. */
  raw: Buffer;
  stderr: string;
}

/** Splits a CGI header block (LF or CRLF line ends) from the body. */
export function parseCgiOutput(raw: Buffer): Omit<CgiResponse, 'raw' | 'stderr'> {
  const crlf = raw.indexOf('\r\n\r\n');
  const lf = raw.indexOf('\n\n');
  let end: number;
  let sep: number;
  if (crlf !== -1 && (lf === -1 || crlf < lf)) [end, sep] = [crlf, 4];
  else if (lf !== -1) [end, sep] = [lf, 2];
  else [end, sep] = [raw.length, 0];
  const head = raw.subarray(0, end).toString('latin1');
  const body = raw.subarray(end + sep);
  let status = 200;
  let statusText = 'OK';
  const headerList: Array<[string, string]> = [];
  for (const line of head.split(/\r?\n/)) {
    if (!line) continue;
    const colon = line.indexOf(':');
    if (colon <= 0) throw new Error(`cgi-fcgi: malformed header line ${JSON.stringify(line)}`);
    const name = line.slice(0, colon).trim();
    const value = line.slice(colon + 1).trim();
    if (name.toLowerCase() === 'status') {
      const match = /^(\d{3})\s*(.*)$/.exec(value);
      if (!match) throw new Error(`cgi-fcgi: malformed Status header ${JSON.stringify(value)}`);
      status = Number(match[1]);
      statusText = match[2] ?? '';
    } else {
      headerList.push([name, value]);
    }
  }
  const headers = new Headers();
  for (const [name, value] of headerList) headers.append(name, value);
  return { status, statusText, headerList, headers, body, text: () => body.toString('utf8') };
}

/**
 * Sends one request. Rejects when cgi-fcgi fails (it exits with errno when it cannot connect)
 * or prints nothing; an application's 404 or 500 is a normal result, since cgi-fcgi exits 0 then.
 */
export async function cgiFcgiRequest(options: CgiFcgiOptions): Promise<CgiResponse> {
  const binary = options.binary ?? findPeer('cgi-fcgi') ?? 'cgi-fcgi';
  const body = options.body === undefined ? undefined : Buffer.from(options.body);
  const env: Record<string, string> = { ...options.params };
  if (body && env.CONTENT_LENGTH === undefined) env.CONTENT_LENGTH = String(body.length);
  const child = spawn(binary, ['-bind', '-connect', options.connect], { env, stdio: ['pipe', 'pipe', 'pipe'] });
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  child.stdout.on('data', (c: Buffer) => out.push(c));
  child.stderr.on('data', (c: Buffer) => err.push(c));
  child.stdin.on('error', () => {}); // EPIPE when the app answers without reading the body
  child.stdin.end(body);
  const timeoutMs = options.timeoutMs ?? 10_000;
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve, reject) => {
    child.once('error', (e) => reject(new Error(`cgi-fcgi: cannot run ${binary}: ${e.message}`)));
    child.once('close', (c, s) => resolve([c, s]));
  }).finally(() => clearTimeout(timer));
  const raw = Buffer.concat(out);
  const stderr = Buffer.concat(err).toString('utf8');
  if (signal) throw new Error(`cgi-fcgi: killed by ${signal}${signal === 'SIGKILL' ? ` after ${timeoutMs} ms` : ''}: ${stderr.trim()}`);
  if (code !== 0) throw new Error(`cgi-fcgi: exited with code ${code} (an errno) connecting to ${options.connect}: ${stderr.trim()}`);
  if (raw.length === 0) throw new Error(`cgi-fcgi: empty response from ${options.connect}: ${stderr.trim()}`);
  return { ...parseCgiOutput(raw), raw, stderr };
}
