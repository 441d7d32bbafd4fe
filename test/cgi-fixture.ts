// Shared by the cgi-*.test.ts files: a `serve` instance over a temporary script directory, a raw HTTP/1.1 client that shows the bytes as sent, and process-group checks.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { startServe, type RunningServer, type ServeOptions } from '../src/commands/serve.ts';
import { processGroupMembers } from '../src/peers/index.ts';
import { waitFor } from './fixtures/eventually.ts';

export { waitFor };

export interface ScriptSpec {
  /** The file's content. */
  body: string;
  /** Default 0o755. */
  mode?: number;
}

export interface CgiServer extends RunningServer {
  /** The script directory (ROOT/cgi-bin). */
  readonly dir: string;
  /** Stops the server and removes ROOT. */
  close(): Promise<void>;
}

/**
 * Writes the scripts into ROOT/cgi-bin of a fresh ROOT (and `outside` into ROOT itself) and starts
 * `serve` on ROOT/cgi-bin, on a free port.
 */
export async function startCgiServer(
  scripts: Record<string, string | ScriptSpec>,
  options: Partial<ServeOptions> = {},
  outside: Record<string, string | ScriptSpec> = {},
): Promise<CgiServer> {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'cgi-test-'));
  fs.chmodSync(root, 0o755);
  const dir = path.join(root, 'cgi-bin');
  fs.mkdirSync(dir);
  writeScripts(dir, scripts);
  writeScripts(root, outside);
  const server = await startServe({
    port: 0,
    host: '127.0.0.1',
    cgiDir: dir,
    timeout: 10,
    maxBody: 64 * 1024 * 1024,
    maxScripts: 8,
    killGrace: 0.5,
    ...options,
  });
  return Object.assign(server, {
    dir,
    async close() {
      await server.stop(2000);
      fs.rmSync(root, { recursive: true, force: true });
    },
  });
}

export function writeScripts(dir: string, scripts: Record<string, string | ScriptSpec>): void {
  for (const [name, spec] of Object.entries(scripts)) {
    const { body, mode = 0o755 } = typeof spec === 'string' ? { body: spec } : spec;
    const file = path.join(dir, name);
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, body);
    fs.chmodSync(file, mode);
  }
}

export interface RawResponse {
  status: number;
  reason: string;
  /** Header names lower-cased; repeated headers joined with ", ". */
  headers: Record<string, string>;
  rawHead: string;
  body: Buffer;
  /** True when the body was framed (Content-Length or chunked) and complete. */
  complete: boolean;
  /** Bytes after a framed response (the next pipelined response). */
  rest: Buffer;
}

/**
 * Sends `request` as is (a whole HTTP/1.1 request, "\n" turned into CRLF unless `exact`) and reads
 * the response until the connection closes. Nothing is normalised on the way, unlike fetch.
 */
export function rawRequest(port: number, request: string | Buffer, options: { exact?: boolean; timeoutMs?: number } = {}): Promise<RawResponse> {
  const bytes = typeof request === 'string' ? Buffer.from(options.exact ? request : request.replace(/\r?\n/g, '\r\n'), 'latin1') : request;
  return new Promise((resolve, reject) => {
    const socket = net.connect({ port, host: '127.0.0.1' });
    const chunks: Buffer[] = [];
    socket.setTimeout(options.timeoutMs ?? 15_000, () => socket.destroy(new Error('rawRequest: timed out')));
    socket.on('data', (c) => chunks.push(c));
    socket.on('error', reject);
    socket.on('close', () => {
      try {
        resolve(parseResponse(Buffer.concat(chunks), { head: bytes.subarray(0, 5).toString('latin1') === 'HEAD ' }));
      } catch (err) {
        reject(err);
      }
    });
    // Not end(): a half-closed connection is a client that left, to Node's server as to most.
    socket.write(bytes);
  });
}

/**
 * Sends several requests on one connection at once (pipelined; the last should say
 * Connection: close) and parses the responses in order: checks that each is framed correctly.
 * Strings get CRLF line ends; Buffers are sent as they are.
 */
export function rawExchange(port: number, requests: Array<string | Buffer>): Promise<RawResponse[]> {
  const bytes = requests.map((r) => (typeof r === 'string' ? Buffer.from(r.replace(/\r?\n/g, '\r\n'), 'latin1') : r));
  return new Promise((resolve, reject) => {
    const socket = net.connect({ port, host: '127.0.0.1' });
    const chunks: Buffer[] = [];
    socket.setTimeout(15_000, () => socket.destroy(new Error('rawExchange: timed out')));
    socket.on('data', (c) => chunks.push(c));
    socket.on('error', reject);
    socket.on('close', () => {
      try {
        resolve(parseResponses(Buffer.concat(chunks), bytes.map((r) => r.subarray(0, r.indexOf(' ')).toString('latin1'))));
      } catch (err) {
        reject(err);
      }
    });
    socket.write(Buffer.concat(bytes));
  });
}

/** GET with Connection: close, plus extra header lines. */
export function get(port: number, target: string, headers: string[] = [], method = 'GET'): Promise<RawResponse> {
  return rawRequest(port, `${method} ${target} HTTP/1.1\nHost: 127.0.0.1:${port}\n${headers.map((h) => h + '\n').join('')}Connection: close\n\n`);
}

/** Parses the responses to pipelined requests with these methods, in order. */
export function parseResponses(data: Buffer, methods: string[]): RawResponse[] {
  const responses: RawResponse[] = [];
  for (const method of methods) {
    const response = parseResponse(data, { head: method === 'HEAD', framedOnly: true });
    responses.push(response);
    data = response.rest;
  }
  return responses;
}

/** Parses one response. `head`: the request was HEAD (no body whatever the headers say). */
export function parseResponse(data: Buffer, options: { head?: boolean; framedOnly?: boolean } = {}): RawResponse {
  const end = data.indexOf('\r\n\r\n');
  assert.ok(end !== -1, `no complete response head in ${JSON.stringify(data.subarray(0, 200).toString('latin1'))}`);
  const rawHead = data.subarray(0, end).toString('latin1');
  const [statusLine, ...lines] = rawHead.split('\r\n');
  const m = /^HTTP\/1\.[01] (\d{3}) ?(.*)$/.exec(statusLine!);
  assert.ok(m, `bad status line ${JSON.stringify(statusLine)}`);
  const headers: Record<string, string> = {};
  for (const line of lines) {
    const colon = line.indexOf(':');
    const name = line.slice(0, colon).toLowerCase();
    const value = line.slice(colon + 1).trim();
    headers[name] = headers[name] === undefined ? value : `${headers[name]}, ${value}`;
  }
  let rest = data.subarray(end + 4);
  let body = rest;
  let complete = false;
  let after: Buffer = Buffer.alloc(0);
  const status = Number(m[1]);
  if (options.head || status === 204 || status === 304 || (status >= 100 && status < 200)) {
    body = Buffer.alloc(0) as Buffer;
    complete = true;
    after = rest;
  } else if (headers['transfer-encoding'] === 'chunked') {
    const parts: Buffer[] = [];
    for (;;) {
      const nl = rest.indexOf('\r\n');
      if (nl === -1) break;
      const size = parseInt(rest.subarray(0, nl).toString('latin1'), 16);
      if (Number.isNaN(size)) break;
      if (size === 0) {
        complete = true;
        after = rest.subarray(nl + 4);
        break;
      }
      if (rest.length < nl + 2 + size + 2) {
        parts.push(rest.subarray(nl + 2));
        break;
      }
      parts.push(rest.subarray(nl + 2, nl + 2 + size));
      rest = rest.subarray(nl + 2 + size + 2);
    }
    body = Buffer.concat(parts);
  } else if (headers['content-length'] !== undefined) {
    const length = Number(headers['content-length']);
    complete = rest.length >= length;
    body = rest.subarray(0, length);
    after = rest.subarray(length);
  } else if (options.framedOnly) {
    body = Buffer.alloc(0) as Buffer;
    after = rest;
  }
  return { status, reason: m[2]!, headers, rawHead, body, complete, rest: after };
}

/** The environment a script printed with ENV_SCRIPT. */
export function envOf(response: RawResponse): Record<string, string> {
  assert.equal(response.status, 200, `expected 200, got ${response.status}: ${response.body.toString()}`);
  return JSON.parse(response.body.toString('utf8')) as Record<string, string>;
}

/** Perl (starts in a few ms): prints its environment, argv and working directory as JSON. */
export const ENV_SCRIPT = `#!/usr/bin/perl
use Cwd ();
sub js { my $s = shift; $s =~ s/(["\\\\])/\\\\$1/g; $s =~ s/([\\x00-\\x1f])/sprintf("\\\\u%04x", ord $1)/ge; "\\"$s\\"" }
my %v = %ENV;
$v{'@ARGV'} = join("\\x01", @ARGV);
$v{'@CWD'} = Cwd::getcwd();
print "Content-Type: application/json\\r\\n\\r\\n{", join(",", map { js($_) . ":" . js($v{$_}) } sort keys %v), "}";
`;

/** Waits until the process group has no live member; fails after timeoutMs. */
export async function assertGroupGone(pgid: number, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (processGroupMembers(pgid).length > 0) {
    if (Date.now() > deadline) assert.fail(`process group ${pgid} still has members: ${processGroupMembers(pgid).join(', ')}`);
    await sleep(20);
  }
}

/** Collects what the runner writes to stderr (its error log) while the test runs. */
export function captureLog(): { text(): string; restore(): void } {
  const original = process.stderr.write.bind(process.stderr);
  let text = '';
  process.stderr.write = ((chunk: string | Uint8Array, ...rest: unknown[]) => {
    text += typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString();
    return (original as (...args: unknown[]) => boolean)(chunk, ...rest);
  }) as typeof process.stderr.write;
  return {
    text: () => text,
    restore: () => {
      process.stderr.write = original;
    },
  };
}
