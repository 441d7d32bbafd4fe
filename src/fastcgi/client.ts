// The web-server side of FastCGI: a pool of keep-alive connections per upstream, multiplexed when the upstream answers FCGI_MPXS_CONNS=1, with the request body streamed into STDIN and STDOUT streamed back, both with backpressure.
import net from 'node:net';
import { Readable } from 'node:stream';
import { CgiHeadParser, CgiResponseError, type CgiHead } from '../cgi/response.ts';
import type { AbortWatch } from '../lazy-abort.ts';
import { describeTarget, parseListenAddress, type ListenTarget } from '../listen.ts';
import { logError } from '../log.ts';
import { RecordDecoder } from './decoder.ts';
import { decodePairs, encodePairs } from './pairs.ts';
import {
  FCGI_ABORT_REQUEST,
  FCGI_CANT_MPX_CONN,
  FCGI_END_REQUEST,
  FCGI_GET_VALUES,
  FCGI_GET_VALUES_RESULT,
  FCGI_KEEP_CONN,
  FCGI_MAX_CONNS,
  FCGI_MAX_REQS,
  FCGI_MPXS_CONNS,
  FCGI_NULL_REQUEST_ID,
  FCGI_OVERLOADED,
  FCGI_PARAMS,
  FCGI_RESPONDER,
  FCGI_STDERR,
  FCGI_STDIN,
  FCGI_STDOUT,
  FCGI_UNKNOWN_ROLE,
  FCGI_UNKNOWN_TYPE,
  FastCGIProtocolError,
} from './protocol.ts';
import { decodeEndRequest, encodeBeginRequest, encodeRecord, encodeStream } from './record.ts';

/** Where an upstream listens: an address we can connect to (a listening one, but not a descriptor). */
export type UpstreamAddress = Exclude<ListenTarget, { kind: 'fd' }>;

/** Parses `host:port`, `[::1]:port`, `port`, `unix:/path`, `/path` or `./path`: a listening address other than `fd:N`. */
export function parseUpstreamAddress(address: string): UpstreamAddress {
  let target: ListenTarget | undefined;
  try {
    target = parseListenAddress(address);
  } catch {
    // reported below, in the client's words
  }
  if (!target || target.kind === 'fd' || (target.kind === 'tcp' && target.port < 1)) {
    throw new TypeError(`fastcgi: cannot parse upstream address ${JSON.stringify(address)} (host:port or unix:/path)`);
  }
  return target;
}

/** Why a request got no (complete) response: the HTTP status to answer with, and a message naming the upstream. */
export class FastCGIUpstreamError extends Error {
  override name = 'FastCGIUpstreamError';
  constructor(
    /** 502 bad or broken upstream, 503 unavailable or overloaded, 504 too slow, 499 the client went away. */
    readonly status: 499 | 502 | 503 | 504,
    message: string,
    readonly upstream: string,
    /** Nothing reached the upstream (the connection could not be made): sending again elsewhere is safe. */
    readonly retryable = false,
  ) {
    super(message);
  }
}

export interface FastCGIClientOptions {
  /** `host:port` or `unix:/path` (or a parsed address). */
  address: string | UpstreamAddress;
  /** Named in log lines and errors; default: the address. */
  name?: string;
  /** Connections open at once (busy and idle). Lowered to the upstream's FCGI_MAX_CONNS. Default 32. */
  maxConns?: number;
  /** Requests in flight on one multiplexed connection. Lowered to the upstream's FCGI_MAX_REQS. Default 64. */
  maxRequestsPerConn?: number;
  /** Requests waiting for a connection; more get 503 at once. Default 1024. */
  queueLimit?: number;
  /** How long a request waits for a free connection before 503. Default 30 s. */
  queueTimeoutMs?: number;
  /** Default 5 s; then 504. */
  connectTimeoutMs?: number;
  /** From the end of the request (STDIN closed) to the first record of the response. Default 60 s; then 504. */
  firstByteTimeoutMs?: number;
  /** Between two records of a response, or while the upstream does not read the request body. Default 60 s. */
  idleTimeoutMs?: number;
  /** An idle pooled connection is closed after this. Default 30 s. */
  keepAliveMs?: number;
  /** How long to wait for the answer to GET_VALUES before assuming no multiplexing. Default 1 s. */
  probeTimeoutMs?: number;
  /** 'auto' (default) asks the upstream with GET_VALUES; true or false skips the question. */
  multiplex?: boolean | 'auto';
  /** Largest response header block. Default 64 KiB. */
  maxHeaderBytes?: number;
  /** Response bytes buffered for a slow HTTP client before the connection stops being read. Default 64 KiB. */
  responseHighWaterMark?: number;
  /**
   * Without multiplexing: how long a new connection waits for its first answer before an idle
   * connection is closed to free the upstream worker pinned to it (php-fpm). Default 200 ms.
   */
  starvationMs?: number;
  /** Each STDERR line of the upstream; default: a log line naming the upstream. */
  onStderr?: (line: string, params: Readonly<Record<string, string>>) => void;
  /** Told of each failed connection attempt (a process manager learns its child is gone). */
  onConnectError?: (error: NodeJS.ErrnoException) => void;
}

export interface FastCGIRequest {
  /** The CGI/1.1 variables, sent as FCGI_PARAMS in this order. */
  params: Record<string, string> | ReadonlyArray<readonly [string, string]>;
  /** Streamed into FCGI_STDIN; null sends an empty STDIN. Read only as fast as the upstream takes it. */
  body?: Readable | null;
  /** Aborting sends FCGI_ABORT_REQUEST on a multiplexed connection, or closes the connection. */
  signal?: AbortWatch;
  /** FCGI_RESPONDER (default) or FCGI_AUTHORIZER (no STDIN at all, as mod_authnz_fcgi does). */
  role?: number;
}

export interface FastCGIResponse {
  status: number;
  reason: string;
  /** Every header line but Status, in order. */
  headers: Array<[name: string, value: string]>;
  head: CgiHead;
  /** The rest of STDOUT. Ends at END_REQUEST; errors when the upstream fails mid-way. Destroying it aborts the request. */
  body: Readable;
  /** Which pooled connection served it (for logs and tests) and the request id on it. */
  connectionId: number;
  requestId: number;
}

/** What GET_VALUES said (§4.1); a limit the upstream did not state is undefined. */
export interface UpstreamValues {
  multiplex: boolean;
  maxConns: number | undefined;
  maxReqs: number | undefined;
  raw: Record<string, string>;
}

interface Settings {
  maxConns: number;
  maxRequestsPerConn: number;
  queueLimit: number;
  queueTimeoutMs: number;
  connectTimeoutMs: number;
  firstByteTimeoutMs: number;
  idleTimeoutMs: number;
  keepAliveMs: number;
  probeTimeoutMs: number;
  maxHeaderBytes: number;
  responseHighWaterMark: number;
  starvationMs: number;
}

const defaults: Settings = {
  maxConns: 32,
  maxRequestsPerConn: 64,
  queueLimit: 1024,
  queueTimeoutMs: 30_000,
  connectTimeoutMs: 5_000,
  firstByteTimeoutMs: 60_000,
  idleTimeoutMs: 60_000,
  keepAliveMs: 30_000,
  probeTimeoutMs: 1_000,
  maxHeaderBytes: 64 * 1024,
  responseHighWaterMark: 64 * 1024,
  starvationMs: 200,
};

const maxStderrLine = 8192;

function seconds(ms: number): string {
  return `${ms / 1000} s`;
}

function parseValues(raw: Record<string, string>): UpstreamValues {
  const limit = (name: string) => {
    const n = Number(raw[name]);
    return raw[name] !== undefined && Number.isInteger(n) && n > 0 ? n : undefined;
  };
  return { multiplex: raw[FCGI_MPXS_CONNS] === '1', maxConns: limit(FCGI_MAX_CONNS), maxReqs: limit(FCGI_MAX_REQS), raw };
}

function connectStatus(err: NodeJS.ErrnoException): 502 | 503 | 504 {
  // EAGAIN: a unix socket whose accept queue is full, the upstream is there but saturated.
  if (err.code === 'EAGAIN') return 503;
  if (err.code === 'ETIMEDOUT') return 504;
  return 502;
}

interface Waiter {
  exchange: Exchange;
  fresh: boolean;
  timer: NodeJS.Timeout;
}

export class FastCGIClient {
  readonly name: string;
  readonly address: UpstreamAddress;
  readonly settings: Settings;
  private readonly multiplexOption: boolean | 'auto';
  private readonly onStderr: (line: string, params: Readonly<Record<string, string>>) => void;
  private readonly onConnectError: ((error: NodeJS.ErrnoException) => void) | undefined;
  private values: UpstreamValues | null = null;
  private probing: Promise<UpstreamValues> | null = null;
  /** @internal */ readonly connections = new Set<Connection>();
  private readonly waiters: Waiter[] = [];
  private closed = false;
  private nextConnectionId = 1;
  /** Counters for logs and tests. */
  readonly stats = { connectionsOpened: 0, requests: 0, maxInFlightOnOneConnection: 0, retries: 0 };

  constructor(options: FastCGIClientOptions) {
    this.address = typeof options.address === 'string' ? parseUpstreamAddress(options.address) : options.address;
    this.name = options.name ?? describeTarget(this.address);
    const settings = { ...defaults };
    for (const key of Object.keys(defaults) as Array<keyof Settings>) {
      const value = options[key];
      if (value !== undefined) settings[key] = value;
    }
    this.settings = settings;
    this.multiplexOption = options.multiplex ?? 'auto';
    if (this.multiplexOption !== 'auto') this.values = { multiplex: this.multiplexOption, maxConns: undefined, maxReqs: undefined, raw: {} };
    this.onConnectError = options.onConnectError;
    this.onStderr = options.onStderr ?? ((line, params) => logError(`fastcgi: upstream ${this.name} stderr: ${line}`, { uri: params.REQUEST_URI }));
  }

  /** What the upstream said to GET_VALUES, once asked; null before. */
  get upstreamValues(): UpstreamValues | null {
    return this.values;
  }

  /** Connections open now and requests in flight on them. */
  get inFlight(): number {
    let n = 0;
    for (const connection of this.connections) n += connection.exchanges.size;
    return n;
  }

  /** @internal a failure worth a log line: the line names the upstream, the error carries the status. */
  failure(status: 499 | 502 | 503 | 504, message: string, params?: Readonly<Record<string, string>>, log = true, retryable = false): FastCGIUpstreamError {
    const text = `fastcgi: upstream ${this.name}: ${message}`;
    if (log && status !== 499) logError(text, { upstream: this.name, uri: params?.REQUEST_URI });
    return new FastCGIUpstreamError(status, text, this.name, retryable);
  }

  /** @internal opens a socket to the upstream, with the connect timeout. */
  connect(params?: Readonly<Record<string, string>>): Promise<net.Socket> {
    return new Promise((resolve, reject) => {
      const socket = this.address.kind === 'tcp' ? net.connect({ host: this.address.host, port: this.address.port }) : net.connect({ path: this.address.path });
      const timer = setTimeout(() => {
        socket.destroy();
        reject(this.failure(504, `connect timed out after ${seconds(this.settings.connectTimeoutMs)}`, params));
      }, this.settings.connectTimeoutMs);
      socket.once('connect', () => {
        clearTimeout(timer);
        socket.removeAllListeners('error');
        socket.setNoDelay(true);
        resolve(socket);
      });
      socket.once('error', (err: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        this.onConnectError?.(err);
        reject(this.failure(connectStatus(err), `cannot connect: ${err.message}`, params, true, true));
      });
    });
  }

  /**
   * Asks the upstream FCGI_MAX_CONNS, FCGI_MAX_REQS and FCGI_MPXS_CONNS (§4.1) on a connection of
   * its own, since php-fpm closes the connection after answering. Resolves null when no answer
   * came in time (or the connection closed first); rejects when it cannot connect. A success is
   * kept: the question is asked once per client.
   */
  async probe(options: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<UpstreamValues | null> {
    const socket = await this.connect();
    const values = await new Promise<UpstreamValues | null>((resolve) => {
      let done = false;
      const finish = (result: UpstreamValues | null) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        options.signal?.removeEventListener('abort', onAbort);
        socket.destroy();
        resolve(result);
      };
      const decoder = new RecordDecoder((type, id, content) => {
        if (id !== FCGI_NULL_REQUEST_ID) return;
        if (type === FCGI_GET_VALUES_RESULT) finish(parseValues(decodePairs(content)));
        // §4.2: an upstream that does not know GET_VALUES says so; it states no limits.
        else if (type === FCGI_UNKNOWN_TYPE) finish(parseValues({}));
      });
      socket.on('data', (chunk: Buffer) => {
        try {
          decoder.push(chunk);
        } catch {
          finish(null);
        }
      });
      socket.on('error', () => {});
      socket.on('close', () => finish(null));
      const timer = setTimeout(() => finish(null), options.timeoutMs ?? this.settings.probeTimeoutMs);
      const onAbort = () => finish(null);
      options.signal?.addEventListener('abort', onAbort, { once: true });
      socket.write(encodeRecord(FCGI_GET_VALUES, FCGI_NULL_REQUEST_ID, encodePairs([[FCGI_MAX_CONNS, ''], [FCGI_MAX_REQS, ''], [FCGI_MPXS_CONNS, '']])));
    });
    if (values && this.multiplexOption === 'auto') this.values = values;
    return values;
  }

  private upstreamSettings(): Promise<UpstreamValues> {
    if (this.values) return Promise.resolve(this.values);
    this.probing ??= this.probe().then(
      (values) => {
        // No answer in time: an upstream that cannot say it multiplexes is used one request per connection.
        this.values ??= values ?? { multiplex: false, maxConns: undefined, maxReqs: undefined, raw: {} };
        this.probing = null;
        return this.values;
      },
      (err) => {
        this.probing = null;
        throw err;
      },
    );
    return this.probing;
  }

  /** @internal requests one multiplexed connection may carry. */
  get perConnection(): number {
    const values = this.values;
    if (!values?.multiplex) return 1;
    return Math.max(1, Math.min(this.settings.maxRequestsPerConn, values.maxReqs ?? Infinity));
  }

  private get connectionCap(): number {
    return Math.max(1, Math.min(this.settings.maxConns, this.values?.maxConns ?? Infinity));
  }

  /**
   * Sends one request. Resolves once the response's header block has arrived; rejects with a
   * FastCGIUpstreamError (already logged, naming the upstream) when there is none to give.
   */
  async request(request: FastCGIRequest): Promise<FastCGIResponse> {
    const params: Record<string, string> = Array.isArray(request.params) ? Object.fromEntries(request.params) : (request.params as Record<string, string>);
    if (this.closed) throw this.failure(503, 'the client is closed', params);
    if (request.signal?.aborted) throw this.failure(499, 'the client went away', params);
    this.stats.requests++;
    await this.upstreamSettings().catch((err: unknown) => {
      // The first request to a down upstream also drains its body, so the HTTP connection stays usable.
      request.body?.resume();
      throw err;
    });
    const exchange = new Exchange(this, request, params);
    return exchange.start();
  }

  /** @internal queues an exchange for a slot (a fresh connection for a retry). */
  enqueue(exchange: Exchange, fresh = false): void {
    if (this.closed) return exchange.fail(this.failure(503, 'the client is closed', exchange.params, false, true));
    const slot = this.waiters.length === 0 ? this.findSlot(fresh) : null;
    if (slot) return slot.add(exchange);
    if (this.waiters.length >= this.settings.queueLimit) {
      return exchange.fail(this.failure(503, `${this.connections.size} connections busy and ${this.waiters.length} requests waiting`, exchange.params));
    }
    const waiter: Waiter = {
      exchange,
      fresh,
      timer: setTimeout(() => {
        this.removeWaiter(waiter);
        exchange.fail(this.failure(503, `no free connection within ${seconds(this.settings.queueTimeoutMs)} (${this.connections.size} busy)`, exchange.params));
      }, this.settings.queueTimeoutMs),
    };
    exchange.waiter = waiter;
    this.waiters.push(waiter);
  }

  /** @internal */
  removeWaiter(waiter: Waiter): void {
    clearTimeout(waiter.timer);
    const i = this.waiters.indexOf(waiter);
    if (i !== -1) this.waiters.splice(i, 1);
    waiter.exchange.waiter = null;
  }

  /** @internal a slot may have freed: hand it to the longest waiting request. */
  dispatch(): void {
    while (this.waiters.length > 0) {
      const waiter = this.waiters[0]!;
      const slot = this.findSlot(waiter.fresh);
      if (!slot) return;
      this.removeWaiter(waiter);
      slot.add(waiter.exchange);
    }
  }

  private findSlot(fresh: boolean): Connection | null {
    const cap = this.perConnection;
    if (!fresh) {
      let idle: Connection | null = null;
      for (const connection of this.connections) {
        if (!connection.usable || connection.exchanges.size >= cap) continue;
        // Multiplexed: fill the oldest connection first, so few connections carry the load.
        if (cap > 1) return connection;
        // One request per connection: the most recently used idle one, so surplus ones time out.
        if (!idle || connection.lastUsed >= idle.lastUsed) idle = connection;
      }
      if (idle) return idle;
    }
    if (this.connections.size >= this.connectionCap) {
      if (!fresh) return null;
      // A retry needs a fresh connection: close an idle one to make room.
      for (const connection of this.connections) {
        if (connection.exchanges.size === 0) {
          connection.close();
          break;
        }
      }
      if (this.connections.size >= this.connectionCap) return null;
    }
    const connection = new Connection(this, this.nextConnectionId++, cap > 1);
    this.connections.add(connection);
    this.stats.connectionsOpened++;
    return connection;
  }

  /**
   * @internal For an upstream without multiplexing that pins a worker to each kept connection
   * (php-fpm does: a worker serves only its connection until it closes), a new connection of ours
   * may wait for a worker that an idle connection of ours holds, for as long as we keep it. So a
   * connection that has waited `starvationMs` for its first answer gets the worker of the next
   * connection to go idle: that one is closed rather than kept.
   * Returns 'starving', 'waiting' (someone waits, not long yet) or 'none'.
   */
  starvation(except: Connection): 'starving' | 'waiting' | 'none' {
    let result: 'waiting' | 'none' = 'none';
    const now = performance.now();
    for (const connection of this.connections) {
      if (connection === except || connection.served > 0 || connection.receivedAny || connection.sentAt === 0 || connection.exchanges.size === 0) continue;
      if (now - connection.sentAt >= this.settings.starvationMs) return 'starving';
      result = 'waiting';
    }
    return result;
  }

  /** @internal */
  connectionClosed(connection: Connection): void {
    this.connections.delete(connection);
    this.dispatch();
  }

  /** @internal */
  stderrLine(line: string, params: Readonly<Record<string, string>>): void {
    this.onStderr(line, params);
  }

  /** Closes every connection; requests in flight and waiting fail with 503. */
  close(): void {
    this.closed = true;
    for (const waiter of this.waiters.splice(0)) {
      clearTimeout(waiter.timer);
      waiter.exchange.fail(this.failure(503, 'the client is closed', waiter.exchange.params, false, true));
    }
    for (const connection of [...this.connections]) connection.destroy(this.failure(502, 'the client is closed', undefined, false));
  }
}

/** One connection of the pool: its decoder, its requests by id, and its write queue. */
class Connection {
  socket: net.Socket | null = null;
  readonly exchanges = new Map<number, Exchange>();
  /** Requests completed on it. */
  served = 0;
  receivedAny = false;
  lastUsed = 0;
  /** When its first request went out; 0 before. */
  sentAt = 0;
  private state: 'connecting' | 'open' | 'closed' = 'connecting';
  private closing = false;
  private nextId = 1;
  private pressure = 0;
  private drainWaiters: Array<() => void> = [];
  private idleTimer: NodeJS.Timeout | null = null;
  private readonly decoder: RecordDecoder;

  constructor(
    private readonly client: FastCGIClient,
    readonly id: number,
    readonly multiplexed: boolean,
  ) {
    this.decoder = new RecordDecoder((type, requestId, content) => this.onRecord(type, requestId, content));
    this.client.connect().then(
      (socket) => this.onConnect(socket),
      (err: FastCGIUpstreamError) => this.onClose(err, true),
    );
  }

  get usable(): boolean {
    return this.state !== 'closed' && !this.closing;
  }

  get isOpen(): boolean {
    return this.state === 'open';
  }

  add(exchange: Exchange): void {
    this.clearIdle();
    let id = 1;
    if (this.multiplexed) {
      // Ids are reused once END_REQUEST has freed them (an aborted one waits for its END_REQUEST).
      id = this.nextId;
      while (this.exchanges.has(id)) id = id >= 0xffff ? 1 : id + 1;
      this.nextId = id >= 0xffff ? 1 : id + 1;
    }
    this.exchanges.set(id, exchange);
    this.lastUsed = performance.now();
    if (this.exchanges.size > this.client.stats.maxInFlightOnOneConnection) this.client.stats.maxInFlightOnOneConnection = this.exchanges.size;
    this.socket?.ref();
    exchange.attach(this, id);
  }

  private onConnect(socket: net.Socket): void {
    if (this.state === 'closed') {
      socket.destroy();
      return;
    }
    this.socket = socket;
    this.state = 'open';
    socket.on('data', (chunk: Buffer) => {
      try {
        this.decoder.push(chunk);
      } catch (err) {
        const message = err instanceof FastCGIProtocolError ? err.message.replace(/^fastcgi: /, '') : String((err as Error)?.stack ?? err);
        this.destroy(this.client.failure(502, `protocol error: ${message}`));
      }
    });
    socket.on('drain', () => this.releaseDrainWaiters());
    // The upstream closed its side (or the socket failed): 'close' follows a turn or two later, and
    // until then no new request may be put on this connection, where it would be lost unsent.
    socket.on('end', () => (this.closing = true));
    socket.on('error', () => (this.closing = true));
    socket.on('close', () => this.onClose(null, false));
    for (const exchange of [...this.exchanges.values()]) exchange.send();
    if (this.exchanges.size === 0) this.becameIdle();
  }

  /** Whether bytes written now would go out: open, and the upstream has not closed its side. */
  get writable(): boolean {
    return this.state === 'open' && !!this.socket && this.socket.writable && !this.socket.destroyed;
  }

  write(buffer: Buffer): boolean {
    const socket = this.socket;
    if (!socket || socket.destroyed || this.state !== 'open') return true;
    // Records of every request started in this turn of the event loop leave in one writev: on a
    // multiplexed connection that is one syscall for a whole batch of HTTP requests, not one each.
    if (this.multiplexed && !this.corked) {
      this.corked = true;
      socket.cork();
      setImmediate(this.uncork);
    }
    return socket.write(buffer);
  }

  private corked = false;
  private readonly uncork = (): void => {
    this.corked = false;
    this.socket?.uncork();
  };

  /** Calls `callback` once the socket's buffer has drained (or the connection is gone). */
  onDrain(callback: () => void): void {
    if (!this.socket || this.state !== 'open' || !this.socket.writableNeedDrain) return callback();
    this.drainWaiters.push(callback);
  }

  private releaseDrainWaiters(): void {
    const waiters = this.drainWaiters;
    this.drainWaiters = [];
    for (const callback of waiters) callback();
  }

  /** A response that its HTTP client does not read fast enough holds the socket's reading. */
  setPressure(paused: boolean): void {
    this.pressure += paused ? 1 : -1;
    if (!this.socket) return;
    if (this.pressure > 0) this.socket.pause();
    else this.socket.resume();
  }

  private onRecord(type: number, requestId: number, content: Buffer): void {
    this.receivedAny = true;
    // Management records on a request connection: nothing was asked, so there is nothing to act on.
    if (requestId === FCGI_NULL_REQUEST_ID) return;
    // §3.3: records for an id that is not active are ignored (a request already given up on).
    const exchange = this.exchanges.get(requestId);
    if (!exchange) return;
    if (type === FCGI_STDOUT) exchange.onStdout(content);
    else if (type === FCGI_STDERR) exchange.onStderr(content);
    else if (type === FCGI_END_REQUEST) {
      const end = decodeEndRequest(content);
      exchange.onEnd(end.appStatus, end.protocolStatus);
    }
    // Other types (§8) have no meaning from an application for a request; they are ignored.
  }

  /** @internal an exchange is over (END_REQUEST, or given up on without one). */
  release(exchange: Exchange, completed: boolean): void {
    if (this.exchanges.get(exchange.id) !== exchange) return;
    this.exchanges.delete(exchange.id);
    if (completed) this.served++;
    this.lastUsed = performance.now();
    if (this.exchanges.size > 0) return this.client.dispatch();
    if (!this.multiplexed) {
      const starvation = this.client.starvation(this);
      if (starvation === 'starving') return this.close();
      if (starvation === 'waiting') {
        const recheck = setTimeout(() => {
          if (this.exchanges.size === 0 && this.usable && this.client.starvation(this) === 'starving') this.close();
        }, this.client.settings.starvationMs);
        recheck.unref();
      }
    }
    this.becameIdle();
    this.client.dispatch();
  }

  private becameIdle(): void {
    if (this.state !== 'open' || this.exchanges.size > 0) return;
    if (this.closing) return this.close();
    this.clearIdle();
    this.idleTimer = setTimeout(() => this.close(), this.client.settings.keepAliveMs);
    this.idleTimer.unref();
    // An idle pooled connection does not keep the process alive.
    this.socket?.unref();
  }

  private clearIdle(): void {
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.idleTimer = null;
  }

  /** Takes no new requests; closes once idle. */
  close(): void {
    this.closing = true;
    if (this.exchanges.size > 0) return;
    this.clearIdle();
    this.state = 'closed';
    this.client.connectionClosed(this);
    this.socket?.destroy();
  }

  /** Closes now: every request on it fails with `error`. */
  destroy(error: FastCGIUpstreamError): void {
    this.decoder.stop();
    this.onClose(error, false);
    this.socket?.destroy();
  }

  private onClose(error: FastCGIUpstreamError | null, connectFailed: boolean): void {
    const wasClosed = this.state === 'closed';
    this.state = 'closed';
    this.clearIdle();
    this.releaseDrainWaiters();
    const exchanges = [...this.exchanges.values()];
    this.exchanges.clear();
    if (!wasClosed) this.client.connectionClosed(this);
    for (const exchange of exchanges) {
      if (connectFailed) exchange.fail(error!, false);
      else exchange.connectionLost(error, this.served > 0);
    }
  }
}

type ExchangeState = 'queued' | 'sending' | 'body' | 'aborting' | 'done';

/** One request: its params and body going out, its header block and body coming back, and its timers. */
class Exchange {
  id = 0;
  waiter: Waiter | null = null;
  private connection: Connection | null = null;
  private state: ExchangeState = 'queued';
  private readonly parser: CgiHeadParser;
  private response: Readable | null = null;
  private resolveHead!: (response: FastCGIResponse) => void;
  private rejectHead!: (error: FastCGIUpstreamError) => void;
  private headSettled = false;
  private timer: NodeJS.Timeout | null = null;
  private paused = false;
  private bodyTouched = false;
  private gotRecord = false;
  private sent = false;
  private retried = false;
  private stderrTail = '';
  private readonly role: number;
  private onAbort: (() => void) | null = null;
  private bodyListeners: { data: (chunk: Buffer) => void; end: () => void; error: (err: Error) => void } | null = null;

  constructor(
    private readonly client: FastCGIClient,
    private readonly request: FastCGIRequest,
    readonly params: Record<string, string>,
  ) {
    this.parser = new CgiHeadParser({ maxHeaderBytes: client.settings.maxHeaderBytes });
    this.role = request.role ?? FCGI_RESPONDER;
  }

  start(): Promise<FastCGIResponse> {
    const promise = new Promise<FastCGIResponse>((resolve, reject) => {
      this.resolveHead = resolve;
      this.rejectHead = reject;
    });
    const signal = this.request.signal;
    if (signal?.aborted) {
      this.state = 'done';
      this.request.body?.resume();
      this.rejectOnce(this.client.failure(499, 'the client went away', this.params));
      return promise;
    }
    if (signal) {
      this.onAbort = () => this.abort(this.client.failure(499, 'the client went away', this.params));
      signal.addEventListener('abort', this.onAbort, { once: true });
    }
    this.client.enqueue(this);
    return promise;
  }

  attach(connection: Connection, id: number): void {
    this.connection = connection;
    this.id = id;
    this.state = 'sending';
    if (connection.isOpen) this.send();
  }

  /** BEGIN_REQUEST, the whole PARAMS stream, and STDIN: in one write when there is no body. */
  send(): void {
    const connection = this.connection!;
    // A connection the upstream has just closed: nothing goes out, and its close retries or fails
    // this request as one that never reached the upstream.
    if (!connection.writable) return;
    this.sent = true;
    if (connection.sentAt === 0) connection.sentAt = performance.now();
    const pairs = encodePairs(this.params);
    const out = [encodeBeginRequest(this.id, this.role, FCGI_KEEP_CONN), encodeStream(FCGI_PARAMS, this.id, pairs), encodeRecord(FCGI_PARAMS, this.id)];
    const body = this.request.body ?? null;
    const withStdin = this.role === FCGI_RESPONDER;
    if (!withStdin || !body || body.readableEnded) {
      if (withStdin) out.push(encodeRecord(FCGI_STDIN, this.id));
      body?.resume();
      connection.write(Buffer.concat(out));
      this.stdinDone();
      return;
    }
    connection.write(Buffer.concat(out));
    this.pumpBody(body);
  }

  /** Copies the body into STDIN records, reading it only as fast as the upstream takes them. */
  private pumpBody(body: Readable): void {
    const connection = this.connection!;
    const data = (chunk: Buffer) => {
      if (this.state !== 'sending' && this.state !== 'body') return;
      this.bodyTouched = true;
      if (chunk.length === 0) return; // an empty STDIN record would end the stream (§3.3)
      if (!connection.write(encodeStream(FCGI_STDIN, this.id, chunk))) {
        body.pause();
        this.arm(this.client.settings.idleTimeoutMs, 'the upstream stopped reading the request body');
        connection.onDrain(() => {
          if (this.state !== 'sending' && this.state !== 'body') return;
          if (!this.gotRecord) this.disarm();
          body.resume();
        });
      }
    };
    const end = () => {
      this.removeBodyListeners();
      if (this.state !== 'sending' && this.state !== 'body') return;
      connection.write(encodeRecord(FCGI_STDIN, this.id));
      this.stdinDone();
    };
    const error = () => {
      this.removeBodyListeners();
      // The HTTP client's body broke off: it went away, so the upstream's work is dropped too.
      this.abort(this.client.failure(499, 'the request body broke off', this.params, false));
    };
    this.bodyListeners = { data, end, error };
    body.on('data', data);
    body.once('end', end);
    body.once('error', error);
    body.resume();
  }

  private removeBodyListeners(): void {
    const body = this.request.body;
    const listeners = this.bodyListeners;
    if (!body || !listeners) return;
    this.bodyListeners = null;
    body.off('data', listeners.data);
    body.off('end', listeners.end);
    body.off('error', listeners.error);
  }

  private stdinDone(): void {
    if (!this.gotRecord) this.arm(this.client.settings.firstByteTimeoutMs, 'no response');
  }

  private arm(ms: number, what: string): void {
    this.disarm();
    if (ms <= 0) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      const headPending = !this.headSettled;
      const message = headPending
        ? `timed out after ${seconds(ms)}: ${what === 'no response' ? 'no response header' : what}`
        : `timed out after ${seconds(ms)} of silence in the middle of the response`;
      this.abort(this.client.failure(504, message, this.params));
    }, ms);
  }

  private disarm(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  /** Any record from the upstream for this request: the first-byte timer gives way to the idle one. */
  private heard(): void {
    this.gotRecord = true;
    if (!this.paused) this.arm(this.client.settings.idleTimeoutMs, 'silence');
  }

  onStdout(content: Buffer): void {
    if (this.state === 'aborting' || this.state === 'done') return;
    this.heard();
    if (content.length === 0) return; // the end of STDOUT; END_REQUEST follows (php-fpm omits this record)
    if (this.response) return this.push(content);
    let parsed;
    try {
      parsed = this.parser.push(content);
    } catch (err) {
      const message = err instanceof CgiResponseError ? err.message.replace(/^cgi: /, '') : String(err);
      this.abort(this.client.failure(502, `bad response header: ${message}`, this.params));
      return;
    }
    if (!parsed) return;
    this.state = 'body';
    this.response = new Readable({
      highWaterMark: this.client.settings.responseHighWaterMark,
      read: () => this.consumerRead(),
      destroy: (err, callback) => {
        // The consumer left before the end: the upstream's work is abandoned.
        if (this.state !== 'done' && this.state !== 'aborting') this.abort(this.client.failure(499, 'the response was abandoned', this.params, false), true);
        callback(err);
      },
    });
    // Its error can come before the consumer has it (a protocol error in the same read as the
    // header block) or after it stopped listening (a local redirect resumes it and moves on): it
    // is logged where it arises, and a consumer that cares listens itself.
    this.response.on('error', () => {});
    const { head, rest } = parsed;
    this.headSettled = true;
    this.resolveHead({
      status: head.status,
      reason: head.reason,
      headers: head.headers,
      head,
      body: this.response,
      connectionId: this.connection!.id,
      requestId: this.id,
    });
    if (rest.length > 0) this.push(rest);
  }

  private push(content: Buffer): void {
    // A view of the socket's chunk (or of the decoder's own buffer): each is fresh, never reused.
    if (!this.response!.push(content) && !this.paused) {
      this.paused = true;
      this.disarm();
      this.connection!.setPressure(true);
    }
  }

  private consumerRead(): void {
    if (!this.paused) return;
    this.paused = false;
    this.connection?.setPressure(false);
    if (this.state === 'body') this.arm(this.client.settings.idleTimeoutMs, 'silence');
  }

  private releasePressure(): void {
    if (this.paused) {
      this.paused = false;
      this.connection?.setPressure(false);
    }
  }

  onStderr(content: Buffer): void {
    if (this.state === 'done') return;
    this.heard();
    if (content.length === 0) return this.flushStderr();
    let text = this.stderrTail + content.toString('utf8');
    let nl;
    while ((nl = text.indexOf('\n')) !== -1) {
      this.client.stderrLine(text.slice(0, nl).replace(/\r$/, ''), this.params);
      text = text.slice(nl + 1);
    }
    while (text.length > maxStderrLine) {
      this.client.stderrLine(text.slice(0, maxStderrLine), this.params);
      text = text.slice(maxStderrLine);
    }
    this.stderrTail = text;
  }

  private flushStderr(): void {
    if (this.stderrTail) this.client.stderrLine(this.stderrTail, this.params);
    this.stderrTail = '';
  }

  onEnd(appStatus: number, protocolStatus: number): void {
    this.flushStderr();
    const state = this.state;
    this.finish(true);
    if (state === 'aborting') return;
    if (this.response) {
      this.response.push(null);
      return;
    }
    // §5.5: the upstream refused the request without running it.
    if (protocolStatus === FCGI_OVERLOADED) return this.rejectOnce(this.client.failure(503, 'overloaded (FCGI_OVERLOADED)', this.params));
    if (protocolStatus === FCGI_CANT_MPX_CONN) return this.rejectOnce(this.client.failure(503, 'cannot multiplex (FCGI_CANT_MPX_CONN)', this.params));
    if (protocolStatus === FCGI_UNKNOWN_ROLE) return this.rejectOnce(this.client.failure(502, `does not know role ${this.role} (FCGI_UNKNOWN_ROLE)`, this.params));
    const reason = this.parser.end().message.replace(/^cgi: /, '').replace('the script wrote', 'it sent').replace('the output ended', 'the response ended');
    this.rejectOnce(this.client.failure(502, `${reason} (app status ${appStatus})`, this.params));
  }

  /** The connection closed under this request. A request on a reused connection that got nothing back is retried once. */
  connectionLost(error: FastCGIUpstreamError | null, reused: boolean): void {
    if (this.state === 'done' || this.state === 'aborting') return this.finish(false);
    const retryable = reused && !this.gotRecord && !this.bodyTouched && !this.retried && error === null;
    if (retryable) {
      // A kept-alive connection the upstream closed as we reused it: nothing was processed.
      this.retried = true;
      this.client.stats.retries++;
      this.connection = null;
      this.state = 'queued';
      this.disarm();
      this.client.enqueue(this, true);
      return;
    }
    error ??= this.client.failure(502, this.headSettled ? 'closed the connection in the middle of the response' : 'closed the connection before the response header', this.params);
    // Never sent: the caller may send it elsewhere (or again, once a replacement is up).
    if (!this.sent && !error.retryable) error = new FastCGIUpstreamError(error.status, error.message, error.upstream, true);
    this.fail(error, false);
  }

  /** Ends the request with an error: before the header block the promise rejects, after it the body errors. */
  fail(error: FastCGIUpstreamError, release = true): void {
    if (this.state === 'done') return;
    // Once the request went out (and was retried), it may have run, or made its upstream crash: the
    // caller must not send it again, even when only the retry's connect failed.
    if (this.sent && error.retryable) error = new FastCGIUpstreamError(error.status, error.message, error.upstream, false);
    if (this.waiter) this.client.removeWaiter(this.waiter);
    this.finish(false, release);
    if (!this.headSettled) this.rejectOnce(error);
    else this.response?.destroy(error);
  }

  /**
   * Gives up on the request (client gone, timeout, bad output). §5.4: on a multiplexed connection
   * FCGI_ABORT_REQUEST asks the upstream to stop, and the id stays taken until its END_REQUEST;
   * on a connection of its own the only way to say so is to close it.
   */
  abort(error: FastCGIUpstreamError, byConsumer = false): void {
    if (this.state === 'done' || this.state === 'aborting') return;
    if (this.waiter) {
      this.client.removeWaiter(this.waiter);
      this.finish(false, false);
      return this.rejectOnce(error);
    }
    const connection = this.connection;
    const before = this.state;
    // Set first: destroying the response below calls back into abort().
    this.state = 'aborting';
    if (!this.headSettled) this.rejectOnce(error);
    else if (!byConsumer) this.response?.destroy(error);
    this.removeBodyListeners();
    this.request.body?.resume();
    this.releasePressure();
    this.disarm();
    this.detachSignal();
    if (!connection || before === 'queued') {
      this.state = before;
      return this.finish(false, false);
    }
    if (!this.sent) {
      // Still waiting for its connection to open: nothing went out, so nothing needs stopping.
      this.state = before;
      return this.finish(false, true);
    }
    if (connection.multiplexed && connection.isOpen) {
      connection.write(encodeRecord(FCGI_ABORT_REQUEST, this.id));
      // An upstream that never ends the aborted request would hold the id forever.
      this.timer = setTimeout(() => connection.destroy(this.client.failure(502, `did not end aborted request ${this.id} within ${seconds(this.client.settings.idleTimeoutMs)}`, this.params)), this.client.settings.idleTimeoutMs);
      this.timer.unref();
      return;
    }
    this.state = before;
    this.finish(false, false);
    connection.exchanges.delete(this.id);
    connection.destroy(this.client.failure(499, 'request aborted', this.params, false));
  }

  private rejectOnce(error: FastCGIUpstreamError): void {
    if (this.headSettled) return;
    this.headSettled = true;
    this.rejectHead(error);
  }

  private detachSignal(): void {
    if (this.onAbort) this.request.signal?.removeEventListener('abort', this.onAbort);
    this.onAbort = null;
  }

  private finish(completed: boolean, release = true): void {
    if (this.state === 'done') return;
    this.state = 'done';
    this.disarm();
    this.detachSignal();
    this.removeBodyListeners();
    this.releasePressure();
    if (release) this.connection?.release(this, completed);
  }
}
