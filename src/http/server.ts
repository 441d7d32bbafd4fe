// The HTTP/1.1 front: a node:http server that hands each request to the route whose path prefix matches, writes one access line per request, and stops gracefully.
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { LazyAbort, type AbortWatch } from '../lazy-abort.ts';
import { logAccess, logError } from '../log.ts';
import { reasonPhrase } from '../response-output.ts';

export interface RouteRequest {
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  /** The path and query served now: the request's own, or the target of a local redirect. */
  readonly target: string;
  /** The request's method, or GET after a local redirect. */
  readonly method: string;
  /** Local redirects followed so far for this request. */
  readonly redirects: number;
  /** Aborted when the client goes away before the response is complete. */
  readonly signal: AbortWatch;
  /** The client sent `Expect: 100-continue`: call res.writeContinue() before reading the body. */
  readonly expectsContinue: boolean;
  /** Body bytes sent; routes add to it for the access log. */
  bytes: number;
  /** The status for the access log when the route wrote the response itself (nph- scripts). */
  loggedStatus?: number;
  /** Serves another path of this server, as a GET without a body (RFC 3875 §6.2.2 local redirect). */
  redirect(target: string): void;
  /** Sends a short plain-text error page, unless the response has started or the client is gone. */
  error(status: number, detail?: string): void;
}

export interface Route {
  /** A path prefix without a trailing slash, e.g. "/cgi-bin": it matches "/cgi-bin" and "/cgi-bin/…". */
  prefix: string;
  handle(request: RouteRequest): void | Promise<void>;
}

export interface HttpServerOptions {
  routes: Route[];
  /**
   * A client must send its whole request head within this long, or gets 408 and is cut off
   * (slowloris). No script runs before the head is complete, so a slow client holds no script slot.
   * Default 20 s.
   */
  headersTimeoutMs?: number;
  /** Largest request head (request line and headers); larger gets 431. Default 16 KiB (Node's). */
  maxHeaderSize?: number;
}

export interface HttpFront {
  readonly server: http.Server;
  /** Requests not finished yet. */
  readonly inFlight: number;
  listen(port: number, host: string): Promise<AddressInfo>;
  /**
   * Stops accepting connections, lets in-flight requests finish until the deadline, then calls
   * `onDeadline` (which should kill what is left) and closes every connection.
   */
  stop(deadlineMs: number, onDeadline?: () => Promise<void> | void): Promise<void>;
}

/** Sends a short plain-text error page; returns the body's size (0 when nothing could be sent). */
export function sendError(res: ServerResponse, status: number, detail?: string): number {
  if (res.headersSent || res.destroyed) return 0;
  const body = `${status} ${reasonPhrase(status)}\n${detail ? detail + '\n' : ''}`;
  const size = Buffer.byteLength(body);
  res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', 'content-length': size });
  res.end(body);
  return size;
}

export function createHttpFront(options: HttpServerOptions): HttpFront {
  const routes = [...options.routes].sort((a, b) => b.prefix.length - a.prefix.length);
  let inFlight = 0;
  let idle: (() => void) | undefined;
  const controllers = new Set<LazyAbort>();

  const findRoute = (target: string): Route | undefined => {
    const q = target.indexOf('?');
    const pathname = q === -1 ? target : target.slice(0, q);
    for (const route of routes) {
      if (pathname.startsWith(route.prefix) && (pathname.length === route.prefix.length || pathname.charCodeAt(route.prefix.length) === 0x2f)) return route;
    }
    return undefined;
  };

  // Per request, closures are avoided: under tsx (esbuild's keepNames) each named one costs a defineProperty.
  const internalError = (request: RouteRequest, err: unknown) => {
    const { req, res } = request;
    logError(`http: ${req.method} ${req.url}: ${(err as Error)?.stack ?? String(err)}`);
    if (res.headersSent) res.destroy();
    else request.error(500);
  };
  const dispatch = (request: RouteRequest) => {
    const route = findRoute(request.target);
    if (!route) {
      if (request.expectsContinue) request.res.setHeader('connection', 'close');
      request.error(404);
      return;
    }
    try {
      const done = route.handle(request);
      if (done) done.catch((err) => internalError(request, err));
    } catch (err) {
      internalError(request, err);
    }
  };

  const onRequest = (req: IncomingMessage, res: ServerResponse, expectsContinue: boolean) => {
    inFlight++;
    const controller = new LazyAbort();
    controllers.add(controller);
    const started = performance.now();
    // No getter in this literal: for one, V8 allocates an AccessorPair in its old generation, which
    // through the getter's closure keeps every request's objects alive through young-generation
    // collections (each then costs 10 to 20 ms and promotes them all).
    const request: RouteRequest = {
      req,
      res,
      target: req.url ?? '/',
      method: req.method ?? 'GET',
      redirects: 0,
      signal: controller,
      expectsContinue,
      bytes: 0,
      redirect(target: string) {
        (this as { redirects: number }).redirects++;
        (this as { target: string }).target = target;
        (this as { method: string }).method = 'GET';
        dispatch(this);
      },
      error(status: number, detail?: string) {
        request.bytes += sendError(res, status, detail);
      },
    };
    res.once('close', () => {
      // 'close' without 'finish': the connection went away first. Whatever runs for it stops.
      if (!res.writableFinished) controller.abort();
      controllers.delete(controller);
      logAccess({
        remoteAddr: req.socket.remoteAddress,
        method: req.method ?? '-',
        uri: req.url ?? '-',
        protocol: `HTTP/${req.httpVersion}`,
        // 499 (nginx's "client closed request"): nothing was sent before the client left.
        status: request.loggedStatus ?? (res.headersSent ? res.statusCode : 499),
        bytes: request.bytes,
        referer: header(req, 'referer'),
        userAgent: header(req, 'user-agent'),
        durationMs: performance.now() - started,
      });
      if (--inFlight === 0) idle?.();
    });
    dispatch(request);
  };

  const headersTimeout = options.headersTimeoutMs ?? 20_000;
  const server = http.createServer(
    {
      keepAlive: true,
      maxHeaderSize: options.maxHeaderSize ?? 16 * 1024,
      headersTimeout,
      // Node's default for the whole request (head and body), raised if the head alone may take longer.
      requestTimeout: Math.max(300_000, headersTimeout),
      // Node checks both timeouts on this period (default 30 s): a 2 s header timeout should cut at ~2 s.
      connectionsCheckingInterval: Math.min(1000, Math.max(100, headersTimeout / 4)),
    },
    (req, res) => onRequest(req, res, false),
  );
  // Longer than the idle timeout of the proxies that pool connections to us (nginx's upstream
  // keepalive_timeout and most load balancers: 60 s): with Node's 5 s we would close connections
  // they are about to reuse, which they answer with 502.
  server.keepAliveTimeout = 65_000;
  // (The header timeout runs from a request's first byte, not over an idle keep-alive connection,
  // so it may be shorter than this.)
  // With a listener, Node leaves `Expect: 100-continue` to us: a body that will be refused is
  // then refused before the client sends it.
  server.on('checkContinue', (req, res) => onRequest(req, res, true));
  server.on('clientError', (err: NodeJS.ErrnoException, socket) => {
    if (err.code === 'ECONNRESET' || !socket.writable) return socket.destroy();
    const status = err.code === 'HPE_HEADER_OVERFLOW' ? 431 : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : 400;
    socket.end(`HTTP/1.1 ${status} ${reasonPhrase(status)}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n`);
  });

  return {
    server,
    get inFlight() {
      return inFlight;
    },
    listen(port: number, host: string) {
      return new Promise((resolve, reject) => {
        server.once('error', reject);
        server.listen({ port, host }, () => {
          server.off('error', reject);
          resolve(server.address() as AddressInfo);
        });
      });
    },
    async stop(deadlineMs: number, onDeadline?: () => Promise<void> | void) {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      // Connections that finish their request from now on are closed rather than kept alive.
      server.prependListener('request', (_req: IncomingMessage, res: ServerResponse) => res.setHeader('connection', 'close'));
      if (inFlight > 0) {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, deadlineMs);
          idle = () => {
            clearTimeout(timer);
            resolve();
          };
        });
      }
      for (const controller of controllers) controller.abort();
      await onDeadline?.();
      server.closeAllConnections();
      await closed;
    },
  };
}

function header(req: IncomingMessage, name: string): string | undefined {
  const value = req.headers[name];
  return Array.isArray(value) ? value.join(', ') : value;
}
