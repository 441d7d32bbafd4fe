// An HTTP/1.1 keep-alive load generator on raw sockets: closed loop with N connections, or open loop at a fixed arrival rate with coordinated-omission-corrected latency.
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { LatencyHistogram } from './histogram.ts';
import { ResponseParser, type ParsedResponse } from './http-parser.ts';

export interface LoadOptions {
  url: string | URL;
  connections: number;
  durationMs: number;
  /** Requests per second across all connections. Absent: closed loop (each connection sends as soon as it has its answer). */
  rate?: number;
  /** When given, every body is compared with it; a different body counts as an error. */
  expectBody?: string | Buffer;
  /** The status every response must have (default 200). */
  expectStatus?: number;
  /** A request without its complete answer after this long is an error (default 30 s). */
  timeoutMs?: number;
  /** How long to wait at the end for requests still in flight (default: timeoutMs). */
  drainMs?: number;
  signal?: AbortSignal;
}

export interface LoadResult {
  /** Requests that finished: answered, failed or timed out. */
  requests: number;
  /** Wrong status, wrong body, connection errors and timeouts. */
  errors: number;
  errorKinds: Record<string, number>;
  /** Successful answers per second over the run. */
  rps: number;
  /** From the first request to the last answer (in-flight requests are waited for, not dropped). */
  elapsedMs: number;
  /** Latency of every answered request; in open loop measured from its intended send time. */
  latency: LatencyHistogram;
  /**
   * Open loop only: requests whose send time came while every connection was busy and that were
   * still waiting at the end. Their waiting time so far is recorded as a lower bound.
   */
  unsent: number;
  aborted: boolean;
}

/** Counters readable while the run goes on, for a progress line. */
export interface LoadRun {
  readonly done: Promise<LoadResult>;
  /** Requests finished so far. */
  completed(): number;
  errors(): number;
  /** Milliseconds since the measured window started (0 while connecting). */
  elapsedMs(): number;
}

interface Conn {
  socket: net.Socket;
  parser: ResponseParser;
  busy: boolean;
  /** The time latency is measured from: the send time (closed loop) or the intended send time (open loop). */
  fromMs: number;
  /** When the request was actually written, for the timeout. */
  sentMs: number;
  /** Consecutive connection failures, for a back-off that keeps a dead server from spinning the loop. */
  failures: number;
  /** The socket is destroyed and a new one not yet opened (during a back-off). */
  closed: boolean;
  /** The current socket has connected. */
  connected: boolean;
}

// Below this many ms to the next intended send, the open-loop pump polls with setImmediate instead
// of a timer: Node's timers fire up to ~1 ms late, and that lateness would count as latency.
const SPIN_MS = 1;

/** Starts a load run. The connections are opened first; the measured window starts when all are up. */
export function startLoad(options: LoadOptions): LoadRun {
  const url = new URL(options.url);
  if (url.protocol !== 'http:') throw new TypeError(`bench: only http:// URLs can be loaded, got ${url.href}`);
  const connections = options.connections;
  if (!Number.isInteger(connections) || connections < 1) throw new TypeError(`bench: connections must be a positive integer, got ${connections}`);
  if (options.rate !== undefined && !(options.rate > 0)) throw new TypeError(`bench: rate must be positive, got ${options.rate}`);
  const host = url.hostname.replace(/^\[|\]$/g, '');
  const port = Number(url.port || 80);
  const request = Buffer.from(
    `GET ${url.pathname}${url.search} HTTP/1.1\r\nHost: ${url.host}\r\nUser-Agent: cgi-runner-bench\r\nAccept: */*\r\n\r\n`,
    'latin1',
  );
  const expectBody = options.expectBody === undefined ? undefined : Buffer.from(options.expectBody);
  const expectStatus = options.expectStatus ?? 200;
  const timeoutMs = options.timeoutMs ?? 30_000;
  const drainMs = options.drainMs ?? timeoutMs;
  const rate = options.rate;

  const latency = new LatencyHistogram();
  const errorKinds: Record<string, number> = {};
  let ok = 0;
  let errors = 0;
  let unsent = 0;
  let startMs = 0;
  let deadlineMs = Infinity;
  let lastAnswerMs = 0;
  let sending = false;
  let finished = false;
  let aborted = false;
  const conns: Conn[] = [];
  const free: Conn[] = [];
  let nextIntendedMs = 0;
  const pendingLowerBounds: number[] = [];
  let pumpTimer: NodeJS.Timeout | undefined;
  let pumpImmediate: NodeJS.Immediate | undefined;
  let sweepTimer: NodeJS.Timeout | undefined;
  let drainTimer: NodeJS.Timeout | undefined;
  let resolveDone!: (r: LoadResult) => void;
  let rejectDone!: (e: Error) => void;
  const done = new Promise<LoadResult>((resolve, reject) => {
    resolveDone = resolve;
    rejectDone = reject;
  });

  const fail = (kind: string) => {
    errors++;
    errorKinds[kind] = (errorKinds[kind] ?? 0) + 1;
  };

  const onAnswer = (conn: Conn, response: ParsedResponse) => {
    const now = performance.now();
    conn.busy = false;
    conn.failures = 0;
    lastAnswerMs = now;
    latency.recordMs(now - conn.fromMs);
    if (response.status !== expectStatus) fail(`status ${response.status}`);
    else if (expectBody && !(response.body && expectBody.equals(response.body))) fail('unexpected body');
    else ok++;
    if (!response.keepAlive) reconnect(conn, 0);
    release(conn);
  };

  const open = (conn: Conn) => {
    const socket = net.connect({ host, port });
    socket.setNoDelay(true);
    conn.socket = socket;
    conn.closed = false;
    conn.connected = false;
    conn.parser = new ResponseParser((r) => onAnswer(conn, r), expectBody !== undefined);
    socket.once('connect', () => {
      conn.connected = true;
    });
    // A request assigned during a back-off goes out as soon as there is a socket again.
    if (conn.busy) socket.write(request);
    socket.on('data', (chunk: Buffer) => {
      try {
        conn.parser.execute(chunk);
      } catch (err) {
        connectionFailed(conn, socket, 'bad response');
      }
    });
    socket.on('end', () => {
      if (socket !== conn.socket) return;
      try {
        conn.parser.finish();
      } catch {
        // Reported below as a closed connection.
      }
      connectionFailed(conn, socket, 'closed');
    });
    socket.on('error', (err: NodeJS.ErrnoException) => connectionFailed(conn, socket, err.code ?? 'socket error'));
    socket.on('close', () => connectionFailed(conn, socket, 'closed'));
    return socket;
  };

  const reconnect = (conn: Conn, delayMs: number) => {
    const old = conn.socket;
    conn.closed = true;
    old.removeAllListeners('data');
    old.removeAllListeners('end');
    old.removeAllListeners('close');
    old.on('error', () => {});
    old.destroy();
    if (finished) return;
    if (delayMs > 0) {
      // Writes to the new socket are queued by net until it connects, so a request may be sent at once.
      setTimeout(() => {
        if (!finished) open(conn);
      }, delayMs).unref();
      conn.parser = new ResponseParser(() => {}, false);
    } else open(conn);
  };

  const connectionFailed = (conn: Conn, socket: net.Socket, kind: string) => {
    if (socket !== conn.socket || conn.closed || finished) return;
    if (!startMs) {
      initialConnectFailed(kind);
      return;
    }
    const wasBusy = conn.busy;
    if (wasBusy) {
      conn.busy = false;
      fail(kind);
    }
    // An idle keep-alive connection the server closed is not an error: open a new one.
    conn.failures = wasBusy || !conn.connected ? conn.failures + 1 : 0;
    const backoff = conn.failures > 1 ? Math.min(200, 5 * 2 ** conn.failures) : 0;
    reconnect(conn, backoff);
    if (wasBusy) release(conn);
  };

  const send = (conn: Conn, fromMs: number, now: number) => {
    conn.busy = true;
    conn.fromMs = fromMs;
    conn.sentMs = now;
    // During a back-off the request is written when the new socket opens (see open).
    if (!conn.closed) conn.socket.write(request);
  };

  // A connection became free: closed loop sends again, open loop lets the pump use it.
  const release = (conn: Conn) => {
    if (!sending) {
      maybeFinish();
      return;
    }
    const now = performance.now();
    if (rate === undefined) {
      if (now < deadlineMs) send(conn, now, now);
      else stopSending();
    } else {
      free.push(conn);
      if (nextIntendedMs <= now) pump();
    }
  };

  const schedulePump = (now: number) => {
    if (pumpTimer || pumpImmediate) return;
    const wait = nextIntendedMs - now;
    if (wait > SPIN_MS) pumpTimer = setTimeout(pump, wait - SPIN_MS);
    else pumpImmediate = setImmediate(pump);
  };

  const pump = () => {
    if (pumpTimer) clearTimeout(pumpTimer);
    if (pumpImmediate) clearImmediate(pumpImmediate);
    pumpTimer = undefined;
    pumpImmediate = undefined;
    if (!sending) return;
    const interval = 1000 / rate!;
    // Loop invariant: requests are sent in intended order, each on the first free connection.
    let now = performance.now();
    while (nextIntendedMs <= now && nextIntendedMs < deadlineMs) {
      const conn = free.pop();
      // Every connection is busy: the request waits, and its latency keeps counting from its intended
      // time. The next answer calls pump again.
      if (!conn) return;
      send(conn, nextIntendedMs, now);
      nextIntendedMs += interval;
      now = performance.now();
    }
    if (nextIntendedMs >= deadlineMs || now >= deadlineMs) {
      stopSending();
      return;
    }
    schedulePump(now);
  };

  const stopSending = () => {
    if (!sending) return;
    sending = false;
    if (rate !== undefined) {
      // Requests due before the deadline that never found a free connection.
      const interval = 1000 / rate;
      const end = Math.min(deadlineMs, performance.now());
      while (nextIntendedMs < end) {
        unsent++;
        pendingLowerBounds.push(nextIntendedMs);
        nextIntendedMs += interval;
      }
    }
    drainTimer = setTimeout(() => {
      for (const conn of conns) {
        if (conn.busy) {
          conn.busy = false;
          fail('timeout');
        }
      }
      finish();
    }, drainMs);
    drainTimer.unref();
    maybeFinish();
  };
  const maybeFinish = () => {
    if (!sending && !finished && conns.every((c) => !c.busy)) finish();
  };

  const finish = () => {
    if (finished) return;
    finished = true;
    sending = false;
    const end = performance.now();
    for (const intended of pendingLowerBounds) latency.recordMs(end - intended);
    if (pumpTimer) clearTimeout(pumpTimer);
    if (pumpImmediate) clearImmediate(pumpImmediate);
    if (sweepTimer) clearInterval(sweepTimer);
    if (drainTimer) clearTimeout(drainTimer);
    options.signal?.removeEventListener('abort', onAbort);
    for (const conn of conns) {
      conn.closed = true;
      conn.socket.removeAllListeners();
      conn.socket.on('error', () => {});
      conn.socket.destroy();
    }
    const elapsedMs = Math.max(1, (startMs ? Math.max(lastAnswerMs, Math.min(end, deadlineMs)) : end) - (startMs || end));
    resolveDone({
      requests: ok + errors,
      errors,
      errorKinds,
      rps: startMs ? (ok * 1000) / elapsedMs : 0,
      elapsedMs: startMs ? elapsedMs : 0,
      latency,
      unsent,
      aborted,
    });
  };

  const onAbort = () => {
    aborted = true;
    finish();
  };
  if (options.signal?.aborted) {
    aborted = true;
    queueMicrotask(finish);
  }
  options.signal?.addEventListener('abort', onAbort, { once: true });

  function initialConnectFailed(kind: string) {
    finished = true;
    for (const c of conns) {
      c.socket.removeAllListeners();
      c.socket.on('error', () => {});
      c.socket.destroy();
    }
    options.signal?.removeEventListener('abort', onAbort);
    rejectDone(new Error(`bench: cannot connect to ${url.host}: ${kind}`));
  }

  // Connect everything first, so connection set-up is not part of the measured window.
  let connected = 0;
  for (let i = 0; i < connections; i++) {
    const conn = { busy: false, fromMs: 0, sentMs: 0, failures: 0, closed: false, connected: false } as Conn;
    conns.push(conn);
    open(conn).once('connect', () => {
      if (++connected === connections) begin();
    });
  }

  function begin() {
    if (finished) return;
    startMs = performance.now();
    deadlineMs = startMs + options.durationMs;
    sending = true;
    sweepTimer = setInterval(() => {
      const now = performance.now();
      for (const conn of conns) {
        if (!conn.busy || now - conn.sentMs <= timeoutMs) continue;
        if (!conn.closed) connectionFailed(conn, conn.socket, 'timeout');
        else {
          // Still in a back-off: give up on this request, the connection keeps trying.
          conn.busy = false;
          fail('timeout');
          release(conn);
        }
      }
      if (sending && now >= deadlineMs && rate === undefined) stopSending();
    }, Math.min(250, timeoutMs));
    sweepTimer.unref();
    if (rate === undefined) {
      for (const conn of conns) send(conn, startMs, startMs);
    } else {
      nextIntendedMs = startMs;
      free.push(...conns);
      pump();
    }
    // A closed loop against a server that never answers still has to end.
    setTimeout(() => {
      if (sending) stopSending();
    }, options.durationMs + 5).unref();
  }

  return {
    done,
    completed: () => ok + errors,
    errors: () => errors,
    elapsedMs: () => (startMs ? performance.now() - startMs : 0),
  };
}

/** Runs a load to completion. */
export function runLoad(options: LoadOptions): Promise<LoadResult> {
  return startLoad(options).done;
}
