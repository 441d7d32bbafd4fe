// A closed-loop HTTP/1.1 load of mixed requests (small GETs, 1 MiB POSTs, streamed answers, requested failures) over keep-alive connections, every answer checked byte for byte.
import http from 'node:http';
import { performance } from 'node:perf_hooks';
import { LatencyHistogram, type LatencySummary } from '../bench/histogram.ts';
import { postBody, sha256Hex, streamBody } from './payload.ts';

export type RequestKind = 'get' | 'post' | 'stream' | 'fail';

export interface MixedLoadOptions {
  /** e.g. http://127.0.0.1:8080/app/ : the routes hello, echo, stream and flaky are below it. */
  baseUrl: string;
  connections: number;
  durationMs: number;
  /** Relative weights of the request kinds. Default: 70 get, 10 post, 20 stream, 0 fail. */
  mix?: Partial<Record<RequestKind, number>>;
  /** Size of each POST body. Default 1 MiB. */
  postBytes?: number;
  /** Chunks and chunk size of a streamed answer. Default 16 × 4 KiB. */
  streamChunks?: number;
  streamChunkBytes?: number;
  /** A request without its whole answer after this long is an error. Default 30 s. */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Called about once a second while the load runs. */
  onProgress?: (progress: LoadProgress) => void;
}

export interface LoadProgress {
  elapsedMs: number;
  requests: number;
  errors: number;
}

export interface KindResult {
  requests: number;
  errors: number;
}

export interface MixedLoadResult {
  requests: number;
  /** Answers that were wrong: status, body, a reset connection, a timeout. Requested failures answered with a 500 are not errors. */
  errors: number;
  errorKinds: Record<string, number>;
  byKind: Record<RequestKind, KindResult>;
  /** Requests for which a failure was asked (kind fail) and that got their 5xx. */
  expectedFailures: number;
  elapsedMs: number;
  rps: number;
  /** Request and response body bytes moved. */
  bytes: number;
  /**
   * Requests sent again because the kept-alive connection they went out on was closed by the server
   * before any answer (the keep-alive race every HTTP client meets, which browsers resolve the same way).
   */
  retried: number;
  latency: LatencySummary;
  /** Error samples (kind: detail), at most 20. */
  samples: string[];
}

const kinds: RequestKind[] = ['get', 'post', 'stream', 'fail'];

/** Runs the load until durationMs has passed (then lets requests in flight finish). */
export async function runMixedLoad(options: MixedLoadOptions): Promise<MixedLoadResult> {
  const base = new URL(options.baseUrl);
  if (base.protocol !== 'http:') throw new TypeError(`soak: only http:// URLs, got ${base.href}`);
  const prefix = base.pathname.endsWith('/') ? base.pathname : base.pathname + '/';
  const weights = { get: 70, post: 10, stream: 20, fail: 0, ...options.mix };
  const total = kinds.reduce((sum, k) => sum + weights[k], 0);
  if (!(total > 0)) throw new TypeError('soak: the mix has no weight');
  const postBytes = options.postBytes ?? 1024 * 1024;
  const bodies = [1, 2, 3, 4].map((seed) => {
    const body = postBody(postBytes, seed);
    return { body, expect: JSON.stringify({ size: postBytes, sha256: sha256Hex(body) }) };
  });
  const chunks = options.streamChunks ?? 16;
  const chunkBytes = options.streamChunkBytes ?? 4096;
  const streamed = streamBody(chunks, chunkBytes);
  const timeoutMs = options.timeoutMs ?? 30_000;
  const agent = new http.Agent({ keepAlive: true, maxSockets: options.connections, maxFreeSockets: options.connections, scheduling: 'fifo' });

  const byKind = Object.fromEntries(kinds.map((k) => [k, { requests: 0, errors: 0 }])) as Record<RequestKind, KindResult>;
  const errorKinds: Record<string, number> = {};
  const samples: string[] = [];
  const latency = new LatencyHistogram();
  let requests = 0;
  let errors = 0;
  let expectedFailures = 0;
  let bytes = 0;
  let counter = 0;
  let retried = 0;

  const pick = (): RequestKind => {
    let r = Math.random() * total;
    for (const k of kinds) {
      r -= weights[k];
      if (r < 0) return k;
    }
    return 'get';
  };

  const fail = (kind: RequestKind, what: string, detail: string) => {
    errors++;
    byKind[kind].errors++;
    errorKinds[what] = (errorKinds[what] ?? 0) + 1;
    if (samples.length < 20) samples.push(`${kind}: ${what}: ${detail}`);
  };

  const one = (kind: RequestKind, retry = false): Promise<void> => {
    const n = counter++;
    let path: string;
    let method = 'GET';
    let body: Buffer | undefined;
    // status 0: any 5xx (a requested failure: 500 from an app that throws, 502 from a script that fails).
    let expect: { status: number; body: Buffer | string };
    switch (kind) {
      case 'get':
        path = 'hello';
        expect = { status: 200, body: 'hello\n' };
        break;
      case 'post': {
        const b = bodies[n % bodies.length]!;
        path = 'echo';
        method = 'POST';
        body = b.body;
        expect = { status: 200, body: b.expect };
        break;
      }
      case 'stream':
        path = `stream?chunks=${chunks}&size=${chunkBytes}`;
        expect = { status: 200, body: streamed };
        break;
      case 'fail':
        // Half of them ask for a failure; the others must be unaffected.
        if (n % 2 === 0) {
          path = `flaky?throw=${n % 4 === 0 ? 'sync' : 'async'}`;
          expect = { status: 0, body: '' };
        } else {
          path = 'flaky';
          expect = { status: 200, body: 'fine\n' };
        }
        break;
    }
    const started = performance.now();
    return new Promise<void>((resolve) => {
      let settled = false;
      const done = (error?: [string, string]) => {
        if (settled) return;
        settled = true;
        requests++;
        byKind[kind].requests++;
        if (error) fail(kind, error[0], error[1]);
        else latency.recordMs(performance.now() - started);
        resolve();
      };
      const headers: Record<string, string | number> = { host: base.host };
      if (body) {
        headers['content-type'] = 'application/octet-stream';
        headers['content-length'] = body.length;
      }
      let answered = false;
      const req = http.request({ agent, host: base.hostname, port: base.port || 80, method, path: prefix + path, headers }, (res) => {
        answered = true;
        const parts: Buffer[] = [];
        res.on('data', (c: Buffer) => parts.push(c));
        res.once('error', (err: NodeJS.ErrnoException) => done([err.code ?? 'response error', err.message]));
        res.once('aborted', () => done(['response aborted', `${res.statusCode} after ${Buffer.concat(parts).length} bytes`]));
        res.once('end', () => {
          const got = Buffer.concat(parts);
          bytes += got.length + (body?.length ?? 0);
          const status = res.statusCode ?? 0;
          if (expect.status === 0 ? status < 500 || status > 599 : status !== expect.status) return done([`status ${status}`, got.subarray(0, 120).toString()]);
          if (expect.status === 0) {
            expectedFailures++;
            return done();
          }
          const want = typeof expect.body === 'string' ? Buffer.from(expect.body) : expect.body;
          if (!got.equals(want)) return done(['wrong body', `${got.length} bytes, expected ${want.length}: ${got.subarray(0, 80).toString('latin1')}`]);
          done();
        });
      });
      req.setTimeout(timeoutMs, () => req.destroy(Object.assign(new Error(`no answer within ${timeoutMs} ms`), { code: 'timeout' })));
      req.once('error', (err: NodeJS.ErrnoException) => {
        // A reused connection closed before any answer: the server never saw the request (RFC 9112 §9.3.1).
        if (!settled && !retry && req.reusedSocket && !answered && (err.code === 'ECONNRESET' || err.code === 'EPIPE')) {
          settled = true;
          retried++;
          counter--;
          void one(kind, true).then(resolve);
          return;
        }
        done([err.code ?? 'request error', `${err.message}${req.reusedSocket ? ' (reused connection' + (retry ? ', sent again' : '') + ')' : ''}`]);
      });
      req.end(body);
    });
  };

  const startedAt = performance.now();
  const deadline = startedAt + options.durationMs;
  const progress = options.onProgress
    ? setInterval(() => options.onProgress!({ elapsedMs: performance.now() - startedAt, requests, errors }), 1000)
    : undefined;
  const loop = async () => {
    while (performance.now() < deadline && !options.signal?.aborted) await one(pick());
  };
  try {
    await Promise.all(Array.from({ length: options.connections }, loop));
  } finally {
    if (progress) clearInterval(progress);
    agent.destroy();
  }
  const elapsedMs = performance.now() - startedAt;
  return {
    requests,
    errors,
    errorKinds,
    byKind,
    expectedFailures,
    elapsedMs,
    rps: (requests - errors) / (elapsedMs / 1000),
    bytes,
    retried,
    latency: latency.summary(),
    samples,
  };
}
