// Fuzz target for the FastCGI responder over real sockets: bad input on one connection must end in the codec's error or a normal answer, release everything it held, and never disturb a request on another connection.
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { RecordDecoder } from '../fastcgi/decoder.ts';
import { encodePairs } from '../fastcgi/pairs.ts';
import {
  FCGI_END_REQUEST,
  FCGI_GET_VALUES,
  FCGI_KEEP_CONN,
  FCGI_PARAMS,
  FCGI_RESPONDER,
  FCGI_STDIN,
  FCGI_STDOUT,
} from '../fastcgi/protocol.ts';
import { decodeEndRequest, encodeBeginRequest, encodeRecord, encodeStream } from '../fastcgi/record.ts';
import { Responder, type ResponderOptions } from '../fastcgi/responder.ts';
import { startResponderServer, type ResponderServer } from '../fastcgi/server.ts';
import type { App, AppContext } from '../handler.ts';
import { setLogFormat } from '../log.ts';
import { checkFor, splitAt, type FuzzOptions, type PropertyResult } from './check.ts';

const encoder = new TextEncoder();

/** The app behind the fuzzed responder: routes chosen by REQUEST_URI, so odd params cannot break URL parsing. */
export const fuzzApp: App = {
  async fetch(request: Request, context: AppContext): Promise<Response> {
    const route = context.params.REQUEST_URI ?? '';
    if (route === '/hello') return new Response('hello\n', { headers: { 'content-type': 'text/plain' } });
    if (route === '/echo') {
      let size = 0;
      for await (const chunk of request.body ?? []) size += (chunk as Uint8Array).byteLength;
      return new Response(`${size}\n`);
    }
    if (route === '/stream') {
      let i = 0;
      return new Response(
        new ReadableStream<Uint8Array>({
          async pull(controller) {
            await new Promise((resolve) => setImmediate(resolve));
            if (i++ === 3) controller.close();
            else controller.enqueue(encoder.encode(`part ${i}\n`));
          },
        }),
      );
    }
    if (route === '/throw') throw new Error('fuzz app: thrown on request');
    if (route === '/slow') {
      await new Promise((resolve) => setTimeout(resolve, 20));
      return new Response('slow\n');
    }
    return new Response('not found\n', { status: 404 });
  },
};

export interface FuzzedResponder {
  readonly responder: Responder;
  readonly server: ResponderServer;
  readonly socketPath: string;
  /** Messages that show a bug: a non-codec error at the connection level, an uncaught exception. */
  readonly problems: string[];
  close(): Promise<void>;
}

/**
 * An in-process responder on a unix socket, with small limits so that the fuzzer reaches them,
 * its log captured: a connection-level error that is not the codec's own is logged with its stack
 * on a line of its own, which is what `problems` collects.
 */
export async function startFuzzedResponder(options: Partial<ResponderOptions> = {}): Promise<FuzzedResponder> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fuzz-responder-'));
  const socketPath = path.join(dir, 'fcgi.sock');
  const responder = new Responder(fuzzApp, {
    maxConns: 64,
    maxReqs: 16,
    maxParamsBytes: 4096,
    stdinHighWaterMark: 8192,
    idleTimeoutMs: 5000,
    requestTimeoutMs: 2000,
    accessLog: false,
    target: 'fuzz',
    ...options,
  });
  const problems: string[] = [];
  setLogFormat('json');
  const originalWrite = process.stderr.write.bind(process.stderr);
  process.stderr.write = ((chunk: string | Uint8Array, ...rest: unknown[]) => {
    const text = typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString();
    for (const line of text.split('\n')) {
      if (!line.startsWith('{')) continue;
      try {
        const entry = JSON.parse(line) as { type?: string; message?: string };
        const message = entry.message ?? '';
        // Codec errors and refusals are "fastcgi: …"; app failures, answered with a 500, are "app: …"
        // (params no web server would send, such as a method that is not a token, fail in the app's
        // Request). Anything else is the stack of an error at the connection level: a bug.
        if (entry.type === 'error' && !message.startsWith('fastcgi: ') && !message.startsWith('app: ')) problems.push(message);
      } catch {
        problems.push(line);
      }
    }
    void rest;
    return true;
  }) as typeof process.stderr.write;
  const onUncaught = (err: unknown) => problems.push(`uncaught: ${(err as Error)?.stack ?? String(err)}`);
  process.on('uncaughtException', onUncaught);
  process.on('unhandledRejection', onUncaught);
  const server = await startResponderServer(responder, { kind: 'unix', path: socketPath }, 0o600);
  return {
    responder,
    server,
    socketPath,
    problems,
    async close() {
      await server.stop(1000);
      process.off('uncaughtException', onUncaught);
      process.off('unhandledRejection', onUncaught);
      process.stderr.write = originalWrite;
      setLogFormat('combined');
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

interface Exchange {
  records: Array<{ type: number; requestId: number; content: Buffer }>;
  closed: boolean;
}

const tick = () => new Promise<void>((resolve) => setImmediate(resolve));

/**
 * Writes `chunks` one event-loop turn apart (so the responder reads them separately), then
 * half-closes unless `keepOpenUntil` says the exchange is complete, and collects what comes back
 * until the responder closes or `timeoutMs` passes.
 */
export function exchange(socketPath: string, chunks: readonly Buffer[], options: { timeoutMs?: number; keepOpenUntil?: (e: Exchange) => boolean } = {}): Promise<Exchange> {
  return new Promise((resolve) => {
    const result: Exchange = { records: [], closed: false };
    const socket = net.connect(socketPath);
    const decoder = new RecordDecoder((type, requestId, content) => {
      result.records.push({ type, requestId, content: Buffer.from(content) });
      if (options.keepOpenUntil?.(result)) socket.end();
    });
    let settled = false;
    const finish = () => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(result);
    };
    const timer = setTimeout(finish, options.timeoutMs ?? 3000);
    socket.on('data', (chunk) => {
      try {
        decoder.push(chunk);
      } catch {
        // The responder only sends valid records; a broken one shows as a missing END_REQUEST.
      }
    });
    socket.on('error', () => {});
    socket.on('close', () => {
      result.closed = true;
      finish();
    });
    socket.once('connect', async () => {
      for (const chunk of chunks) {
        if (socket.destroyed) return;
        socket.write(chunk);
        await tick();
      }
      if (!options.keepOpenUntil) socket.end();
    });
  });
}

function requestStream(id: number, params: Record<string, string>, body: Uint8Array, flags: number): Buffer {
  return Buffer.concat([
    encodeBeginRequest(id, FCGI_RESPONDER, flags),
    encodeStream(FCGI_PARAMS, id, encodePairs(params)),
    encodeRecord(FCGI_PARAMS, id),
    encodeStream(FCGI_STDIN, id, body),
    encodeRecord(FCGI_STDIN, id),
  ]);
}

const routes = ['/hello', '/echo', '/stream', '/throw', '/slow', '/missing'] as const;

const arbValidRequest = fc.record({
  id: fc.integer({ min: 1, max: 0xffff }),
  route: fc.constantFrom(...routes),
  method: fc.constantFrom('GET', 'POST', 'HEAD', 'PUT'),
  extra: fc.dictionary(fc.stringMatching(/^[A-Z_]{1,20}$/), fc.string({ maxLength: 100 }), { maxKeys: 6 }),
  body: fc.oneof({ weight: 6, arbitrary: fc.uint8Array({ maxLength: 1000 }) }, { weight: 1, arbitrary: fc.tuple(fc.integer({ min: 60_000, max: 140_000 }), fc.integer({ min: 0, max: 255 })).map(([n, b]) => new Uint8Array(n).fill(b)) }),
  keepConn: fc.boolean(),
});

function bytesOf(r: { id: number; route: string; method: string; extra: Record<string, string>; body: Uint8Array; keepConn: boolean }): Buffer {
  return requestStream(r.id, { ...r.extra, REQUEST_METHOD: r.method, REQUEST_URI: r.route, SERVER_PROTOCOL: 'HTTP/1.1', HTTP_HOST: 'fuzz.test' }, r.body, r.keepConn ? FCGI_KEEP_CONN : 0);
}

/** The parts of an exchange that must not depend on how the bytes were split. */
function essentials(e: Exchange, id: number): string {
  const mine = e.records.filter((r) => r.requestId === id);
  const stdout = Buffer.concat(mine.filter((r) => r.type === FCGI_STDOUT).map((r) => r.content)).toString('latin1');
  const end = mine.find((r) => r.type === FCGI_END_REQUEST);
  return JSON.stringify({ stdout, end: end ? decodeEndRequest(end.content) : null });
}

const ended = (id: number) => (e: Exchange) => e.records.some((r) => r.requestId === id && r.type === FCGI_END_REQUEST);

export interface ResponderFuzzState {
  target: FuzzedResponder;
  /** A keep-alive connection, open all along, that must keep answering. */
  canary: Canary;
}

/** A second connection that sends a request after every case and must get its answer. */
export class Canary {
  private socket: net.Socket | undefined;
  private records: Array<{ type: number; requestId: number; content: Buffer }> = [];
  private waiter: (() => void) | null = null;
  private closed = false;
  sent = 0;

  private constructor(private readonly socketPath: string) {}

  static async open(socketPath: string): Promise<Canary> {
    const canary = new Canary(socketPath);
    await canary.reopen();
    return canary;
  }

  private async reopen(): Promise<void> {
    this.socket?.destroy();
    const socket = net.connect(this.socketPath);
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    this.socket = socket;
    this.closed = false;
    this.records = [];
    const decoder = new RecordDecoder((type, requestId, content) => {
      this.records.push({ type, requestId, content: Buffer.from(content) });
      this.waiter?.();
    });
    socket.on('data', (chunk) => decoder.push(chunk));
    socket.on('error', () => {});
    socket.on('close', () => {
      if (this.socket !== socket) return;
      this.closed = true;
      this.waiter?.();
    });
  }

  /** One GET /hello; throws unless a 200 with "hello" arrives within timeoutMs. A closed canary is reopened for the next case. */
  async check(timeoutMs = 3000): Promise<void> {
    if (this.closed) {
      await this.reopen();
      throw new Error('the canary connection was closed by the responder during the case');
    }
    this.records = [];
    this.sent++;
    this.socket!.write(requestStream(1, { REQUEST_METHOD: 'GET', REQUEST_URI: '/hello', SERVER_PROTOCOL: 'HTTP/1.1' }, new Uint8Array(0), FCGI_KEEP_CONN));
    const deadline = Date.now() + timeoutMs;
    while (!this.records.some((r) => r.type === FCGI_END_REQUEST)) {
      if (this.closed) {
        await this.reopen();
        throw new Error('the canary connection closed while waiting for its answer');
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`canary request ${this.sent} got no END_REQUEST within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
    const stdout = Buffer.concat(this.records.filter((r) => r.type === FCGI_STDOUT).map((r) => r.content)).toString('latin1');
    if (!/^Status: 200/.test(stdout) || !stdout.endsWith('hello\n')) throw new Error(`canary request ${this.sent} got ${JSON.stringify(stdout.slice(0, 200))}`);
  }

  close(): void {
    this.socket?.destroy();
  }
}

/** After a case: the responder let go of the case's connection and requests, reported nothing odd, and still answers. */
async function afterCase(state: ResponderFuzzState): Promise<void> {
  const { responder, problems } = state.target;
  const deadline = Date.now() + 3000;
  // Only the canary's connection may remain, and no request may stay in flight.
  while (responder.connections.size > 1 || responder.activeRequests > 0) {
    if (Date.now() > deadline) throw new Error(`responder holds ${responder.connections.size} connections and ${responder.activeRequests} requests after the case`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  if (problems.length) throw new Error(`responder reported: ${problems.splice(0).join('\n')}`);
  await state.canary.check();
}

export function responderProperties(state: ResponderFuzzState) {
  const socketPath = () => state.target.socketPath;
  return {
    'arbitrary bytes: the connection ends or answers, nothing leaks, another connection is served': fc.asyncProperty(
      fc.uint8Array({ maxLength: 2048 }),
      fc.array(fc.nat(), { maxLength: 6 }),
      async (bytes, cuts) => {
        const e = await exchange(socketPath(), splitAt(Buffer.from(bytes), cuts));
        if (!e.closed) throw new Error('the responder did not close a half-closed connection within 3 s');
        await afterCase(state);
      },
    ),

    'a valid request with one byte changed: the same guarantees': fc.asyncProperty(arbValidRequest, fc.nat(), fc.integer({ min: 0, max: 255 }), fc.array(fc.nat(), { maxLength: 6 }), async (r, at, value, cuts) => {
      const bytes = bytesOf(r);
      bytes[at % bytes.length] = value;
      const e = await exchange(socketPath(), splitAt(bytes, cuts));
      if (!e.closed) throw new Error('the responder did not close a half-closed connection within 3 s');
      await afterCase(state);
    }),

    'a valid request split anywhere gets the same answer as sent whole': fc.asyncProperty(arbValidRequest, fc.array(fc.nat(), { maxLength: 24 }), async (r, cuts) => {
      const bytes = bytesOf(r);
      // Not half-closed before the answer: to the responder, as to nginx, a closed side means a client that left.
      const until = { keepOpenUntil: ended(r.id) };
      const whole = await exchange(socketPath(), [bytes], until);
      const split = await exchange(socketPath(), splitAt(bytes, cuts), until);
      if (!ended(r.id)(whole)) throw new Error('no END_REQUEST for the request sent whole');
      const a = essentials(whole, r.id);
      const b = essentials(split, r.id);
      if (a !== b) throw new Error(`answers differ:\nwhole ${a.slice(0, 300)}\nsplit ${b.slice(0, 300)}`);
      await afterCase(state);
    }),

    'well-framed records of any type, id and content: the same guarantees': fc.asyncProperty(
      fc.array(
        fc.record({
          type: fc.oneof(fc.integer({ min: 1, max: 11 }), fc.integer({ min: 0, max: 255 })),
          requestId: fc.oneof(fc.constant(1), fc.constant(0), fc.integer({ min: 0, max: 0xffff })),
          content: fc.oneof(
            fc.uint8Array({ maxLength: 64 }),
            fc.constant(new Uint8Array([0, 1, 1, 0, 0, 0, 0, 0])), // a valid BEGIN_REQUEST body
            fc.constant(new Uint8Array(0)),
            fc.constant(encodePairs({ FCGI_MAX_CONNS: '', FCGI_MAX_REQS: '', FCGI_MPXS_CONNS: '' })),
            fc.constant(encodePairs({ REQUEST_METHOD: 'GET', REQUEST_URI: '/stream' })),
          ),
        }),
        { maxLength: 24 },
      ),
      async (records) => {
        const bytes = Buffer.concat(records.map((r) => encodeRecord(r.type, r.requestId, r.content)));
        const e = await exchange(socketPath(), [bytes]);
        if (!e.closed) throw new Error('the responder did not close a half-closed connection within 3 s');
        // Whatever the responder sent must be well-formed: management answers on id 0, request output elsewhere.
        for (const rec of e.records) {
          if (rec.requestId === 0 && rec.type !== 10 && rec.type !== 11) throw new Error(`record type ${rec.type} on id 0`);
        }
        await afterCase(state);
      },
    ),

    'many requests multiplexed on one connection, some over the cap: each gets END_REQUEST': fc.asyncProperty(
      fc.uniqueArray(arbValidRequest, { minLength: 1, maxLength: 24, selector: (r) => r.id }),
      async (requests) => {
        const bytes = Buffer.concat(requests.map((r) => bytesOf({ ...r, keepConn: true })));
        const ids = requests.map((r) => r.id);
        const e = await exchange(socketPath(), [bytes], { keepOpenUntil: (x) => ids.every((id) => ended(id)(x)), timeoutMs: 5000 });
        const missing = ids.filter((id) => !ended(id)(e));
        if (missing.length) throw new Error(`no END_REQUEST for ${missing.length} of ${ids.length} requests`);
        await afterCase(state);
      },
    ),
  };
}

export interface ResponderFuzzReport {
  results: PropertyResult[];
  /** Canary requests answered while fuzzing. */
  canaryRequests: number;
}

export async function fuzzResponder(options: FuzzOptions): Promise<ResponderFuzzReport> {
  const target = await startFuzzedResponder();
  const canary = await Canary.open(target.socketPath);
  const state: ResponderFuzzState = { target, canary };
  const results: PropertyResult[] = [];
  try {
    const properties = Object.entries(responderProperties(state));
    for (const [name, property] of properties) {
      results.push(await checkFor('responder', name, property, { ...options, timeMs: options.timeMs / properties.length }));
    }
    // The GET_VALUES answer still works at the end, on a fresh connection.
    const values = await exchange(target.socketPath, [encodeRecord(FCGI_GET_VALUES, 0, encodePairs({ FCGI_MAX_REQS: '' }))], { keepOpenUntil: (x) => x.records.length > 0 });
    if (values.records.length === 0) throw new Error('no GET_VALUES_RESULT after fuzzing');
  } finally {
    canary.close();
    await target.close();
  }
  return { results, canaryRequests: canary.sent };
}
