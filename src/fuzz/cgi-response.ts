// Fuzz targets for the CGI side: the header-block parser on any script output, and `serve` running a script that prints fuzzed bytes, whose answer must be the response the parser predicts or a 502.
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { CgiHeadParser, CgiResponseError, type CgiHead } from '../cgi/response.ts';
import { startCgiStack } from '../soak/stack.ts';
import { checkFor, splitAt, type FuzzOptions, type PropertyResult } from './check.ts';

type Parsed = { head: CgiHead; rest: Buffer } | { error: string };

/** Feeds the chunks to a parser as the host does; the output ending early is an error too. */
export function parseOutput(chunks: readonly Buffer[], nph = false): Parsed {
  const parser = new CgiHeadParser({ maxHeaderBytes: 4096, nph });
  try {
    for (let i = 0; i < chunks.length; i++) {
      const got = parser.push(chunks[i]!);
      if (got) return { head: got.head, rest: Buffer.concat([got.rest, ...chunks.slice(i + 1)]) };
    }
  } catch (err) {
    if (err instanceof CgiResponseError) return { error: err.message };
    throw err;
  }
  return { error: parser.end().message };
}

const token = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

/** What every parsed head must satisfy, whatever the output was: nothing that could split or corrupt the HTTP response. */
export function checkHead(head: CgiHead): void {
  if (!Number.isInteger(head.status) || head.status < (head.nph ? 100 : 200) || head.status > 599) throw new Error(`status ${head.status}`);
  if (/[\r\n\0]/.test(head.reason)) throw new Error(`reason ${JSON.stringify(head.reason)}`);
  for (const [name, value] of head.headers) {
    if (!token.test(name)) throw new Error(`header name ${JSON.stringify(name)}`);
    if (/[\0-\x08\x0a-\x1f\x7f]/.test(value)) throw new Error(`header value ${JSON.stringify(value)}`);
  }
  if (head.kind === 'local-redirect' && (!head.location?.startsWith('/') || head.headers.length !== 1)) throw new Error('local redirect with other fields');
}

const goodLines = fc.oneof(
  fc.constantFrom(
    'Content-Type: text/plain',
    'content-type:text/html',
    'Status: 404 Not Found',
    'Status: 200',
    'Status: 204',
    'Status: 304 Not Modified',
    'Status: 302 Found',
    'Status: 500 Oops',
    'Location: /cgi-bin/missing',
    'Location: http://example.test/',
    'Location: //evil.test/',
    'Location: /\\evil.test',
    'Content-Length: 5',
    'Content-Length: 0',
    'Content-Length: 20',
    'Content-Length: -1',
    'Content-Length: 5, 5',
    'Content-Length: 99999999999999999999',
    'Transfer-Encoding: chunked',
    'Connection: close',
    'Keep-Alive: timeout=1',
    'Set-Cookie: a=1',
    'X-High: caf\xe9',
  ),
  fc
    .tuple(fc.stringMatching(/^[A-Za-z][A-Za-z0-9-]{0,15}$/), fc.stringMatching(/^[\x20-\x7e]{0,40}$/))
    .map(([n, v]) => `${n}: ${v}`),
);

const badLines = fc.oneof(
  fc.constantFrom(
    'Status: 199',
    'Status: 600',
    'Status: 99',
    'Status: abc',
    'Status:',
    'Location:',
    ' continued',
    '\tcontinued',
    'NoColon',
    ': no name',
    'Bad Name: x',
    'X-Null: a\0b',
    'X-CR: a\rb',
    'X-Split: a\r\nSet-Cookie: injected=1',
    'HTTP/1.1 200 OK',
  ),
  fc.tuple(fc.string({ unit: 'binary-ascii', maxLength: 12 }), fc.string({ unit: 'binary-ascii', maxLength: 40 })).map(([n, v]) => `${n}: ${v}`),
);

/** Output shaped like a header block (most often a valid one), then a body. */
export const arbScriptOutput = fc
  .record({
    lines: fc.array(fc.oneof({ weight: 12, arbitrary: goodLines }, { weight: 1, arbitrary: badLines }), { maxLength: 6 }),
    eol: fc.oneof({ weight: 10, arbitrary: fc.constantFrom('\n', '\r\n') }, { weight: 1, arbitrary: fc.constant('\r') }),
    blank: fc.oneof({ weight: 10, arbitrary: fc.constant(null) }, { weight: 1, arbitrary: fc.constantFrom('\n', '\r\n', '', '\r') }),
    body: fc.uint8Array({ maxLength: 300 }),
  })
  .map(({ lines, eol, blank, body }) => Buffer.concat([Buffer.from(lines.map((l) => l + eol).join('') + (blank ?? eol), 'latin1'), body]));

export function cgiParserProperties() {
  return {
    'arbitrary output: only the parser error, and a parsed head never holds what would split the response': fc.property(
      fc.uint8Array({ maxLength: 2048 }),
      fc.array(fc.nat(), { maxLength: 6 }),
      fc.boolean(),
      (bytes, cuts, nph) => {
        const parsed = parseOutput(splitAt(Buffer.from(bytes), cuts), nph);
        if ('head' in parsed) checkHead(parsed.head);
      },
    ),
    'header-like output, split anywhere: the same head and body as read whole': fc.property(arbScriptOutput, fc.array(fc.nat(), { maxLength: 12 }), fc.boolean(), (bytes, cuts, nph) => {
      const whole = parseOutput([bytes], nph);
      const split = parseOutput(splitAt(bytes, cuts), nph);
      if ('head' in whole) checkHead(whole.head);
      const view = (p: Parsed) => ('head' in p ? JSON.stringify({ ...p.head, raw: p.head.raw.toString('hex'), rest: p.rest.toString('hex') }) : p.error);
      return view(whole) === view(split);
    }),
    'a valid header block with one byte changed: the parser error or a safe head': fc.property(
      arbScriptOutput,
      fc.nat(),
      fc.integer({ min: 0, max: 255 }),
      (bytes, at, value) => {
        if (bytes.length === 0) return;
        const mutated = Buffer.from(bytes);
        mutated[at % mutated.length] = value;
        const parsed = parseOutput([mutated]);
        if ('head' in parsed) checkHead(parsed.head);
      },
    ),
  };
}

export interface FuzzedServe {
  /** The port `serve` listens on. */
  readonly port: number;
  readonly casesDir: string;
  /** Signs of a bug in the runner: it exited, or its HTTP front logged an internal error. */
  problems(): string[];
  close(): Promise<void>;
}

/** `serve` as a real process over one script, `emit`, which prints the file cases/QUERY_STRING. */
export async function startFuzzedServe(): Promise<FuzzedServe> {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'fuzz-cgi-'));
  const casesDir = path.join(root, 'cases');
  const log = path.join(root, 'serve.log');
  fs.mkdirSync(casesDir);
  const stack = await startCgiStack({ scripts: { emit: `#!/bin/sh\nexec cat "${casesDir}/$QUERY_STRING"\n` }, args: ['--max-scripts', '8'], logFile: log });
  let offset = 0;
  return {
    port: Number(new URL(stack.baseUrl).port),
    casesDir,
    problems() {
      const found: string[] = [];
      const exit = stack.runner.exitStatus();
      if (exit) found.push(`serve exited (${exit.signal ?? `code ${exit.code}`}): ${stack.runner.outputTail(1000)}`);
      // Every 502 is logged with its reason ("cgi: …"); an internal error of the HTTP front is "http: …" with a stack.
      const text = fs.existsSync(log) ? fs.readFileSync(log, 'utf8') : '';
      const fresh = text.slice(offset);
      offset = text.length;
      for (const line of fresh.split('\n')) if (/^\S+ http: /.test(line) || /uncaught|Unhandled/i.test(line)) found.push(line);
      return found;
    },
    async close() {
      await stack.stop();
      fs.rmSync(root, { recursive: true, force: true });
    },
  };
}

export interface HttpOutcome {
  /** The response parsed by Node's strict HTTP client; undefined when it could not be parsed at all. */
  status?: number;
  headers: Array<[string, string]>;
  body: Buffer;
  /** The body ended early (the connection closed before the framing said it was complete). */
  cut: boolean;
  error?: string;
}

export function fetchStrict(port: number, target: string, timeoutMs = 10_000): Promise<HttpOutcome> {
  return new Promise((resolve) => {
    const outcome: HttpOutcome = { headers: [], body: Buffer.alloc(0), cut: false };
    const req = http.get({ host: '127.0.0.1', port, path: target, agent: false, headers: { connection: 'close' }, insecureHTTPParser: false }, (res) => {
      outcome.status = res.statusCode;
      for (let i = 0; i < res.rawHeaders.length; i += 2) outcome.headers.push([res.rawHeaders[i]!.toLowerCase(), res.rawHeaders[i + 1]!]);
      const parts: Buffer[] = [];
      res.on('data', (c: Buffer) => parts.push(c));
      res.once('aborted', () => (outcome.cut = true));
      res.once('error', () => (outcome.cut = true));
      res.once('close', () => {
        if (!res.complete) outcome.cut = true;
        outcome.body = Buffer.concat(parts);
        clearTimeout(timer);
        resolve(outcome);
      });
    });
    const timer = setTimeout(() => req.destroy(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
    req.once('error', (err) => {
      clearTimeout(timer);
      outcome.error = err.message;
      resolve(outcome);
    });
  });
}

const hopByHop = new Set(['connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'trailer', 'proxy-connection', 'te']);
// Fields the HTTP front adds itself.
const added = new Set(['date', 'connection', 'keep-alive', 'transfer-encoding', 'content-length']);

/** Checks the answer `serve` gave for a script that printed `output` against what the parser predicts. */
export function checkServed(output: Buffer, got: HttpOutcome): void {
  if (got.status === undefined) throw new Error(`not a valid HTTP response: ${got.error}`);
  const parsed = parseOutput([output]);
  if ('error' in parsed) {
    if (got.status !== 502) throw new Error(`expected 502 (${parsed.error}), got ${got.status}`);
    return;
  }
  const { head, rest } = parsed;
  if (head.kind === 'local-redirect') return; // served from another path: any valid response
  if (got.status !== head.status) {
    // A header Node refuses to send (it validates values too) turns into a 502 before anything is sent.
    if (got.status === 502) return;
    throw new Error(`expected status ${head.status}, got ${got.status}`);
  }
  const scriptNames = new Set(head.headers.map(([n]) => n.toLowerCase()));
  for (const [name] of got.headers) {
    if (!added.has(name) && !scriptNames.has(name)) throw new Error(`the response has a header the script did not send: ${name}`);
    if (hopByHop.has(name) && name !== 'connection' && name !== 'keep-alive' && name !== 'transfer-encoding') throw new Error(`hop-by-hop header ${name} passed on`);
  }
  if (head.status === 204 || head.status === 304) {
    if (got.body.length !== 0) throw new Error(`a ${head.status} with a body`);
    return;
  }
  let want = rest;
  if (head.contentLength !== undefined) {
    if (rest.length < head.contentLength) {
      // The script promised more than it wrote: the response can only be cut short.
      if (!got.cut) throw new Error(`the script wrote ${rest.length} of ${head.contentLength} bytes and the response was not cut`);
      if (!rest.subarray(0, got.body.length).equals(got.body)) throw new Error('the cut body differs from what the script wrote');
      return;
    }
    want = rest.subarray(0, head.contentLength);
  }
  if (got.cut) throw new Error('the response was cut short');
  if (!got.body.equals(want)) throw new Error(`body differs: got ${got.body.length} bytes, expected ${want.length}`);
}

export function cgiServeProperties(target: FuzzedServe) {
  let n = 0;
  const serveOne = async (output: Buffer) => {
    const name = String(n++);
    fs.writeFileSync(path.join(target.casesDir, name), output);
    const got = await fetchStrict(target.port, `/cgi-bin/emit?${name}`);
    fs.rmSync(path.join(target.casesDir, name), { force: true });
    const problems = target.problems();
    if (problems.length) throw new Error(problems.join('\n'));
    checkServed(output, got);
  };
  return {
    'serve: arbitrary script output gives the predicted response or a 502': fc.asyncProperty(fc.uint8Array({ maxLength: 1024 }), (bytes) => serveOne(Buffer.from(bytes))),
    'serve: header-like script output gives the predicted response or a 502': fc.asyncProperty(arbScriptOutput, (bytes) => serveOne(bytes)),
    'serve: one byte changed in a header block gives the predicted response or a 502': fc.asyncProperty(arbScriptOutput, fc.nat(), fc.integer({ min: 0, max: 255 }), (bytes, at, value) => {
      const mutated = Buffer.from(bytes);
      if (mutated.length) mutated[at % mutated.length] = value;
      return serveOne(mutated);
    }),
  };
}

export async function fuzzCgi(options: FuzzOptions): Promise<PropertyResult[]> {
  const results: PropertyResult[] = [];
  const parserProps = Object.entries(cgiParserProperties());
  // The parser is pure and fast; running scripts is slow: give each half the time.
  for (const [name, property] of parserProps) results.push(await checkFor('cgi', name, property, { ...options, timeMs: options.timeMs / 2 / parserProps.length }));
  const target = await startFuzzedServe();
  try {
    const serveProps = Object.entries(cgiServeProperties(target));
    for (const [name, property] of serveProps) results.push(await checkFor('cgi', name, property, { ...options, timeMs: options.timeMs / 2 / serveProps.length }));
    // Still serving after all that.
    fs.writeFileSync(path.join(target.casesDir, 'ok'), 'Content-Type: text/plain\n\nstill here\n');
    const last = await fetchStrict(target.port, '/cgi-bin/emit?ok');
    if (last.status !== 200 || last.body.toString() !== 'still here\n') throw new Error(`serve stopped answering after fuzzing: ${last.status} ${last.error ?? ''}`);
  } finally {
    await target.close();
  }
  return results;
}
