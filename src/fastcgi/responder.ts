// The application side of FastCGI (§6.2 Responder, §6.3 Authorizer): decodes requests from a connection, calls the app, writes records back.
import type { Socket } from 'node:net';
import { createLazyRequest, LazyAppContext, type App, type Role } from '../handler.ts';
import { logAccess, logError } from '../log.ts';
import { lightweightParts } from '../lightweight-response.ts';
import { cgiHeaderBlock, plainBody } from '../response-output.ts';
import { RecordDecoder } from './decoder.ts';
import { decodePairs, encodePairs } from './pairs.ts';
import {
  FCGI_ABORT_REQUEST,
  FCGI_AUTHORIZER,
  FCGI_BEGIN_REQUEST,
  FCGI_DATA,
  FCGI_GET_VALUES,
  FCGI_GET_VALUES_RESULT,
  FCGI_KEEP_CONN,
  FCGI_MAX_CONNS,
  FCGI_MAX_REQS,
  FCGI_MPXS_CONNS,
  FCGI_NULL_REQUEST_ID,
  FCGI_OVERLOADED,
  FCGI_PARAMS,
  FCGI_REQUEST_COMPLETE,
  FCGI_RESPONDER,
  FCGI_STDERR,
  FCGI_STDIN,
  FCGI_STDOUT,
  FCGI_UNKNOWN_ROLE,
  FastCGIProtocolError,
  recordTypeName,
} from './protocol.ts';
import {
  decodeBeginRequest,
  encodeCompleteResponse,
  encodeEndOfResponse,
  encodeEndRequest,
  encodeRecord,
  encodeStream,
  encodeUnknownType,
} from './record.ts';
import { StdinBody } from './stdin-body.ts';
import { LazyAbort } from '../lazy-abort.ts';

export interface ResponderOptions {
  /** Connections served at once by this process; more are closed on accept. Answered as FCGI_MAX_CONNS. */
  maxConns: number;
  /** Requests in flight in this process; more get FCGI_OVERLOADED. Answered as FCGI_MAX_REQS. */
  maxReqs: number;
  /**
   * Requests in flight on one connection; more get FCGI_OVERLOADED, so one multiplexing client cannot
   * take every slot of the process. 0: only maxReqs applies. 1 is answered as FCGI_MPXS_CONNS=0.
   */
  maxConnReqs: number;
  /** PARAMS bytes one request may send; more is a protocol error that closes the connection. */
  maxParamsBytes: number;
  /** STDIN bytes queued for an app that does not read them yet, before the socket stops being read. */
  stdinHighWaterMark: number;
  /** Close a connection with no request in flight after this long; 0 never does. */
  idleTimeoutMs: number;
  /** Abort a request that has not finished after this long; 0 never does. */
  requestTimeoutMs: number;
  /** Write one access line per request. */
  accessLog: boolean;
  /** Named in log lines (the app file, or the CGI directory). */
  target: string;
}

export const defaultResponderOptions: ResponderOptions = {
  maxConns: 1024,
  maxReqs: 1024,
  maxConnReqs: 0,
  maxParamsBytes: 256 * 1024,
  stdinHighWaterMark: 256 * 1024,
  idleTimeoutMs: 300_000,
  requestTimeoutMs: 0,
  accessLog: true,
  target: 'app',
};

const roleNames: Record<number, Role> = { [FCGI_RESPONDER]: 'responder', [FCGI_AUTHORIZER]: 'authorizer' };

const internalErrorHead = 'Status: 500 Internal Server Error\r\ncontent-type: text/plain; charset=utf-8\r\n\r\n';
const internalErrorBody = 'Internal Server Error\n';

interface ActiveRequest {
  id: number;
  role: number;
  keepConn: boolean;
  paramsChunks: Buffer[];
  paramsBytes: number;
  params: Record<string, string> | null;
  stdin: StdinBody | null;
  controller: LazyAbort;
  /** True once END_REQUEST is queued or the request was dropped: later output is discarded. */
  done: boolean;
  headSent: boolean;
  /** STDERR content was sent through context.stderr; the stream is ended when the response starts. */
  stderrOpen: boolean;
  status: number;
  bytes: number;
  startedAt: number;
  reader: ReadableStreamDefaultReader<Uint8Array> | null;
  timer: NodeJS.Timeout | null;
}

/** One responder per process: holds the app, the limits, and the connections it serves. */
export class Responder {
  readonly connections = new Set<ResponderConnection>();
  activeRequests = 0;
  draining = false;
  readonly options: ResponderOptions;
  private drainedWaiters: Array<() => void> = [];

  constructor(
    readonly app: App,
    options: Partial<ResponderOptions> = {},
  ) {
    this.options = { ...defaultResponderOptions, ...options };
  }

  handleConnection(socket: Socket): void {
    if (this.draining || this.connections.size >= this.options.maxConns) {
      logError(`fastcgi: refusing connection: ${this.draining ? 'shutting down' : `FCGI_MAX_CONNS (${this.options.maxConns}) reached`}`, { target: this.options.target });
      socket.destroy();
      return;
    }
    this.connections.add(new ResponderConnection(this, socket));
  }

  /** The GET_VALUES answers (§4.1): the limits this process actually enforces. */
  valueOf(name: string): string | undefined {
    if (name === FCGI_MAX_CONNS) return String(this.options.maxConns);
    if (name === FCGI_MAX_REQS) return String(this.options.maxReqs);
    if (name === FCGI_MPXS_CONNS) return this.options.maxConnReqs === 1 ? '0' : '1';
    return undefined;
  }

  connectionClosed(connection: ResponderConnection): void {
    this.connections.delete(connection);
    if (this.draining && this.connections.size === 0) this.notifyDrained();
  }

  /**
   * Graceful stop: idle connections close now, busy ones after their last request; after
   * `deadlineMs` whatever is left is aborted. The caller stops accepting first.
   */
  async shutdown(deadlineMs: number): Promise<void> {
    this.draining = true;
    for (const connection of this.connections) connection.closeIfIdle();
    if (this.connections.size === 0) return;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      new Promise<void>((resolve) => this.drainedWaiters.push(resolve)),
      new Promise<void>((resolve) => {
        timer = setTimeout(resolve, deadlineMs);
      }),
    ]);
    clearTimeout(timer);
    for (const connection of [...this.connections]) connection.destroy(new Error('shutdown deadline passed'));
  }

  private notifyDrained(): void {
    const waiters = this.drainedWaiters;
    this.drainedWaiters = [];
    for (const resolve of waiters) resolve();
  }
}

/** App output held while the request's body is still coming (see pump); beyond it, the app waits. */
const maxHeldOutput = 1024 * 1024;

/** The state of one web-server connection: its decoder, its requests, and its ordered output. */
export class ResponderConnection {
  private readonly decoder: RecordDecoder;
  private readonly requests = new Map<number, ActiveRequest>();
  private drainWaiters: Array<() => void> = [];
  private pressure = 0;
  private closed = false;
  private closeWhenIdle = false;

  constructor(
    private readonly responder: Responder,
    private readonly socket: Socket,
  ) {
    this.decoder = new RecordDecoder((type, id, content) => this.onRecord(type, id, content));
    if (typeof socket.setNoDelay === 'function') socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => {
      try {
        this.decoder.push(chunk);
      } catch (err) {
        this.protocolFailure(err);
      }
    });
    socket.on('end', () => {
      // The web server half-closed: it will send nothing more. A partial record is worth a log line.
      if (!this.decoder.atBoundary) logError('fastcgi: connection closed in the middle of a record', { target: this.responder.options.target });
      if (this.requests.size === 0) socket.end();
    });
    socket.on('drain', () => this.releaseDrainWaiters());
    socket.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code !== 'ECONNRESET' && err.code !== 'EPIPE') logError(`fastcgi: connection error: ${err.message}`, { target: this.responder.options.target });
    });
    socket.on('close', () => this.onClose());
    if (responder.options.idleTimeoutMs > 0) {
      // Armed once: every read and write restarts it. When it fires with requests in flight (an app
      // thinking quietly) nothing happens, and the response's first write arms it again.
      socket.setTimeout(responder.options.idleTimeoutMs);
      socket.on('timeout', () => {
        if (this.requests.size === 0) socket.end();
      });
    }
  }

  closeIfIdle(): void {
    this.closeWhenIdle = true;
    if (this.requests.size === 0) this.socket.end();
  }

  destroy(reason: Error): void {
    this.abortAll(reason);
    this.socket.destroy();
  }

  private write(buffer: Buffer): boolean {
    if (this.closed || this.socket.destroyed) return true;
    return this.socket.write(buffer);
  }

  /** Resolves when the socket's buffer has drained (or the socket is gone): explicit backpressure. */
  private drained(): Promise<void> {
    if (this.closed || this.socket.destroyed || !this.socket.writableNeedDrain) return Promise.resolve();
    return new Promise((resolve) => this.drainWaiters.push(resolve));
  }

  private releaseDrainWaiters(): void {
    const waiters = this.drainWaiters;
    this.drainWaiters = [];
    for (const resolve of waiters) resolve();
  }

  private onClose(): void {
    if (this.closed) return;
    this.closed = true;
    this.decoder.stop();
    // nginx never sends ABORT_REQUEST: a client that goes away shows up as this close.
    this.abortAll(new Error('fastcgi: connection closed by the web server'));
    this.releaseDrainWaiters();
    this.responder.connectionClosed(this);
  }

  private abortAll(reason: Error): void {
    for (const request of [...this.requests.values()]) this.abortRequest(request, reason, false);
  }

  private protocolFailure(err: unknown): void {
    const message = err instanceof FastCGIProtocolError ? err.message : `fastcgi: ${(err as Error)?.message ?? String(err)}`;
    logError(`${message}; closing the connection`, { target: this.responder.options.target, remote: this.socket.remoteAddress });
    if (!(err instanceof FastCGIProtocolError)) logError(String((err as Error)?.stack ?? err));
    this.decoder.stop();
    this.destroy(new Error(message));
  }

  private onRecord(type: number, id: number, content: Buffer): void {
    if (id === FCGI_NULL_REQUEST_ID) return this.onManagementRecord(type, content);
    if (type === FCGI_BEGIN_REQUEST) return this.onBeginRequest(id, content);
    const request = this.requests.get(id);
    // §3.3: records for a request id that is not active are ignored (a rejected or finished request).
    if (!request) {
      if (type === FCGI_PARAMS || type === FCGI_STDIN || type === FCGI_ABORT_REQUEST || type === FCGI_DATA) return;
      throw new FastCGIProtocolError(`unexpected ${recordTypeName(type)} record for request ${id}`);
    }
    switch (type) {
      case FCGI_PARAMS:
        return this.onParams(request, content);
      case FCGI_STDIN:
        if (!request.stdin) return;
        if (content.length === 0) request.stdin.end();
        else request.stdin.push(content);
        return;
      case FCGI_ABORT_REQUEST:
        // §5.4: the app answers an abort with END_REQUEST, promptly.
        return this.abortRequest(request, new Error('fastcgi: request aborted by the web server'), true);
      case FCGI_DATA:
        return; // Filter-role input; this responder implements no Filter, so no request can expect it.
      default:
        throw new FastCGIProtocolError(`unexpected ${recordTypeName(type)} record for request ${id}`);
    }
  }

  private onManagementRecord(type: number, content: Buffer): void {
    if (type !== FCGI_GET_VALUES) {
      // §4.2: a management record we do not understand is answered, not fatal.
      this.write(encodeUnknownType(type));
      return;
    }
    const answers: Array<[string, string]> = [];
    for (const name of Object.keys(decodePairs(content))) {
      const value = this.responder.valueOf(name);
      if (value !== undefined) answers.push([name, value]);
    }
    this.write(encodeRecord(FCGI_GET_VALUES_RESULT, FCGI_NULL_REQUEST_ID, encodePairs(answers)));
  }

  private onBeginRequest(id: number, content: Buffer): void {
    const { role, flags } = decodeBeginRequest(content);
    if (this.requests.has(id)) throw new FastCGIProtocolError(`BEGIN_REQUEST for request ${id}, which is already active`);
    const keepConn = (flags & FCGI_KEEP_CONN) !== 0;
    if (!roleNames[role]) {
      this.rejectRequest(id, keepConn, FCGI_UNKNOWN_ROLE);
      return;
    }
    const options = this.responder.options;
    // Over the cap the request is refused rather than the socket paused: pausing would stall
    // every other request multiplexed on this connection.
    const connectionFull = options.maxConnReqs > 0 && this.requests.size >= options.maxConnReqs;
    if (this.responder.activeRequests >= options.maxReqs || connectionFull || this.responder.draining) {
      const why = this.responder.draining ? 'shutting down' : connectionFull ? `${options.maxConnReqs} requests in flight on this connection` : `${options.maxReqs} requests in flight`;
      logError(`fastcgi: request ${id} refused with FCGI_OVERLOADED: ${why}`, { target: options.target });
      this.rejectRequest(id, keepConn, FCGI_OVERLOADED);
      return;
    }
    const request: ActiveRequest = {
      id,
      role,
      keepConn,
      paramsChunks: [],
      paramsBytes: 0,
      params: null,
      stdin: null,
      controller: new LazyAbort(),
      done: false,
      headSent: false,
      stderrOpen: false,
      status: 0,
      bytes: 0,
      startedAt: performance.now(),
      reader: null,
      timer: null,
    };
    // mod_authnz_fcgi sends no STDIN at all for the Authorizer role (§6.3): its body is empty.
    if (role === FCGI_RESPONDER) request.stdin = new StdinBody(options.stdinHighWaterMark, (paused) => this.setPressure(paused));
    this.requests.set(id, request);
    this.responder.activeRequests++;
    if (options.requestTimeoutMs > 0) {
      request.timer = setTimeout(() => this.timeOut(request), options.requestTimeoutMs);
      request.timer.unref();
    }
  }

  private rejectRequest(id: number, keepConn: boolean, protocolStatus: number): void {
    this.write(encodeEndRequest(id, 0, protocolStatus));
    if (!keepConn && this.requests.size === 0) this.socket.end();
  }

  private onParams(request: ActiveRequest, content: Buffer): void {
    if (request.params) return; // PARAMS after the stream ended: nothing to add to.
    if (content.length > 0) {
      request.paramsBytes += content.length;
      if (request.paramsBytes > this.responder.options.maxParamsBytes) {
        throw new FastCGIProtocolError(`PARAMS of request ${request.id} exceed the ${this.responder.options.maxParamsBytes}-byte cap`);
      }
      request.paramsChunks.push(content);
      return;
    }
    // The empty record ends the stream; only now may pairs be decoded, since one may straddle records.
    const chunks = request.paramsChunks;
    request.paramsChunks = [];
    request.params = decodePairs(chunks.length === 1 ? chunks[0] : Buffer.concat(chunks));
    this.startApp(request);
  }

  private setPressure(paused: boolean): void {
    this.pressure += paused ? 1 : -1;
    if (this.pressure > 0) this.socket.pause();
    else this.socket.resume();
  }

  private startApp(request: ActiveRequest): void {
    const params = request.params!;
    const abort = request.controller;
    const stdin = request.stdin;
    const role = roleNames[request.role];
    const appRequest = createLazyRequest({ params, abort, body: stdin ? () => stdin.toStream() : null });
    const context = new LazyAppContext(params, role, abort, (message: string) => this.stderr(request, message), request.id);
    let result: Response | Promise<Response>;
    try {
      result = this.responder.app.fetch(appRequest, context);
    } catch (err) {
      this.appFailed(request, err);
      return;
    }
    if (result instanceof Response) this.respond(request, result, true);
    else if (result && typeof (result as Promise<Response>).then === 'function') {
      (result as Promise<Response>).then(
        (response) => this.respond(request, response),
        (err) => this.appFailed(request, err),
      );
    } else this.appFailed(request, new TypeError(`app: fetch returned ${typeof result}, not a Response`));
  }

  /** A line for the web server's error log (nginx: "FastCGI sent in stderr"); only before the response starts. */
  private stderr(request: ActiveRequest, message: string): void {
    if (request.done || request.headSent) return;
    request.stderrOpen = true;
    this.write(encodeStream(FCGI_STDERR, request.id, Buffer.from(message.endsWith('\n') ? message : message + '\n', 'utf8')));
  }

  /** `checked`: the caller already knows `response` is a Response (the synchronous path). */
  private respond(request: ActiveRequest, response: Response, checked = false): void {
    if (request.done) {
      response.body?.cancel().catch(() => {});
      return;
    }
    if (request.stderrOpen) {
      // §3.3: a stream ends with an empty record; STDERR had content, so it is ended before STDOUT starts.
      request.stderrOpen = false;
      this.write(encodeRecord(FCGI_STDERR, request.id));
    }
    if (!checked && !(response instanceof Response)) {
      this.appFailed(request, new TypeError('app: fetch resolved to something other than a Response'));
      return;
    }
    // The lightweight parts once, for the head, the body and HEAD's cancel below.
    const light = lightweightParts(response);
    let head: string;
    try {
      head = cgiHeaderBlock(response, light);
      // An Authorizer's `Variable-NAME` becomes the variable NAME on the web server (Apache sets it as is,
      // and params are case-sensitive), but Fetch Headers lowercase every name: send NAME upper-cased, as
      // CGI variables are, whatever case the app wrote, so REMOTE_USER arrives and not remote_user.
      if (request.role === FCGI_AUTHORIZER) head = head.replace(/^variable-([^:]*):/gim, (_, name: string) => `Variable-${name.toUpperCase()}:`);
    } catch (err) {
      this.appFailed(request, err);
      return;
    }
    request.status = response.status;
    const isHead = request.params!.REQUEST_METHOD === 'HEAD';
    const body = isHead ? null : plainBody(response, light);
    if (body !== undefined) {
      // A lightweight Response has no stream to cancel; asking for one would build it.
      if (isHead && !light) response.body?.cancel().catch(() => {});
      request.bytes = body === null ? 0 : typeof body === 'string' ? Buffer.byteLength(body) : body.byteLength;
      request.headSent = true;
      this.write(encodeCompleteResponse(request.id, head, body));
      this.finished(request);
      return;
    }
    let reader: ReadableStreamDefaultReader<Uint8Array>;
    try {
      reader = response.body!.getReader();
    } catch (err) {
      // A body the app has already locked or read: a failure before the head goes out.
      this.appFailed(request, err);
      return;
    }
    request.headSent = true;
    void this.pump(request, reader, encodeStream(FCGI_STDOUT, request.id, Buffer.from(head, 'latin1')));
  }

  /** Copies a streamed body to STDOUT records as it is produced, waiting for 'drain' when the socket is full. */
  private async pump(request: ActiveRequest, reader: ReadableStreamDefaultReader<Uint8Array>, head: Buffer): Promise<void> {
    request.reader = reader;
    // nginx stops sending the request body once it has passed a response header on to its client
    // (ngx_http_upstream_send_request_handler), so an app still reading a body not all received
    // would wait for the rest forever. Its output waits here instead, up to a limit, until STDIN
    // has all come: the order php-fpm and fcgiwrap keep by reading the whole body first.
    const stdin = request.stdin;
    let held: Buffer[] | null = stdin && stdin.hasStream && !stdin.complete ? [head] : null;
    let heldBytes = head.length;
    const flush = () => {
      const out = held!.length === 1 ? held![0]! : Buffer.concat(held!);
      held = null;
      return this.write(out);
    };
    if (!held) this.write(head);
    // One wait for the end of STDIN, shared by every turn below (null: the race's sign for it).
    const stdinComplete = held ? stdin!.whenComplete().then(() => null) : null;
    let reading: ReturnType<typeof reader.read> | null = null;
    try {
      for (;;) {
        if (held && (stdin!.complete || heldBytes >= maxHeldOutput)) {
          await stdinComplete;
          if (request.done) break;
          if (!flush()) await this.drained();
        }
        reading ??= reader.read();
        // While output is held, the end of STDIN is as much news as the app's next chunk.
        if (held && (await Promise.race([reading, stdinComplete!])) === null) continue;
        const { done, value } = await reading;
        reading = null;
        if (done || request.done) break;
        const bytes = typeof value === 'string' ? Buffer.from(value as string) : value;
        if (!(bytes instanceof Uint8Array)) throw new TypeError('app: response body stream produced something other than bytes');
        if (bytes.byteLength === 0) continue;
        request.bytes += bytes.byteLength;
        const record = encodeStream(FCGI_STDOUT, request.id, bytes);
        if (held) {
          held.push(record);
          heldBytes += record.length;
        } else if (!this.write(record)) await this.drained();
      }
    } catch (err) {
      if (request.done) return;
      // What the app produced before failing goes first, as it would have without the hold.
      if (held) flush();
      this.appFailed(request, err);
      return;
    } finally {
      request.reader = null;
    }
    if (request.done) {
      reader.cancel().catch(() => {});
      return;
    }
    if (held) {
      // The app is done without the rest of the body: that is not waited for.
      stdin!.discard();
      flush();
    }
    this.write(encodeEndOfResponse(request.id, 0));
    this.finished(request);
  }

  private appFailed(request: ActiveRequest, err: unknown): void {
    if (request.done) return;
    const message = err instanceof Error ? (err.stack ?? err.message) : String(err);
    logError(`app: request failed: ${message}`, { requestId: request.id, target: this.responder.options.target, uri: request.params?.REQUEST_URI });
    const out: Buffer[] = [];
    if (!request.headSent) {
      request.status = 500;
      request.bytes = internalErrorBody.length;
      out.push(encodeStream(FCGI_STDOUT, request.id, Buffer.from(internalErrorHead + internalErrorBody, 'latin1')));
    }
    // The web server logs STDERR (nginx: "FastCGI sent in stderr"); the stream ends with an empty record.
    out.push(encodeStream(FCGI_STDERR, request.id, Buffer.from(`app: ${err instanceof Error ? err.message : String(err)}\n`, 'utf8')));
    out.push(encodeRecord(FCGI_STDERR, request.id));
    out.push(encodeEndOfResponse(request.id, 1));
    this.write(Buffer.concat(out));
    this.finished(request);
  }

  private timeOut(request: ActiveRequest): void {
    if (request.done) return;
    const seconds = this.responder.options.requestTimeoutMs / 1000;
    request.controller.abort(new Error(`fastcgi: request timed out after ${seconds}s`));
    this.appFailed(request, new Error(`request timed out after ${seconds}s`));
  }

  /** Ends a request whose END_REQUEST is queued: bookkeeping, the access line, and closing if asked. */
  private finished(request: ActiveRequest): void {
    this.release(request);
    if (this.responder.options.accessLog) this.logRequest(request);
    if (!request.keepConn || this.closeWhenIdle || this.responder.draining) {
      // Without FCGI_KEEP_CONN the app closes the connection once the response is sent (§5.1).
      if (this.requests.size === 0) this.socket.end();
      else this.closeWhenIdle = true;
    }
  }

  private release(request: ActiveRequest): void {
    request.done = true;
    if (request.timer) clearTimeout(request.timer);
    request.stdin?.discard();
    this.requests.delete(request.id);
    this.responder.activeRequests--;
  }

  private abortRequest(request: ActiveRequest, reason: Error, sendEnd: boolean): void {
    if (request.done) return;
    request.stdin?.fail(reason);
    this.release(request);
    request.controller.abort(reason);
    request.reader?.cancel(reason).catch(() => {});
    if (request.status === 0) request.status = 499; // nginx's code for "client closed request"
    if (this.responder.options.accessLog && request.params) this.logRequest(request);
    if (sendEnd) {
      this.write(encodeEndOfResponse(request.id, 0, FCGI_REQUEST_COMPLETE));
      if ((!request.keepConn || this.closeWhenIdle) && this.requests.size === 0) this.socket.end();
    }
  }

  private logRequest(request: ActiveRequest): void {
    const params = request.params;
    if (!params) return;
    logAccess({
      remoteAddr: params.REMOTE_ADDR,
      remoteUser: params.REMOTE_USER,
      method: params.REQUEST_METHOD || '-',
      uri: params.REQUEST_URI || (params.SCRIPT_NAME || '') + (params.PATH_INFO || '') + (params.QUERY_STRING ? '?' + params.QUERY_STRING : ''),
      protocol: params.SERVER_PROTOCOL,
      status: request.status,
      bytes: request.bytes,
      referer: params.HTTP_REFERER,
      userAgent: params.HTTP_USER_AGENT,
      durationMs: performance.now() - request.startedAt,
      requestId: request.id,
      target: this.responder.options.target,
    });
  }
}
