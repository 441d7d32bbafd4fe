// The /cgi-bin/ route: turns an HTTP request into a CGI invocation (script, environment, body) for the host, and the script's response back into HTTP (RFC 3875 §6).
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import { cgiEnv, CgiEnvError, isindexArgs, type CgiRequestFacts } from '../cgi/env.ts';
import type { CgiHost } from '../cgi/host.ts';
import type { CgiHead } from '../cgi/response.ts';
import { resolveScript, type ScriptDirectory } from '../cgi/resolve.ts';
import { logError } from '../log.ts';
import type { Route, RouteRequest } from './server.ts';
import { spoolBody } from './spool.ts';

export interface CgiRouteOptions {
  host: CgiHost;
  /** The script directory and the URL prefix it is served at. */
  scripts: ScriptDirectory;
  documentRoot: string;
  serverSoftware: string;
  /** Larger request bodies get 413. */
  maxBody: number;
  /** A chunked body larger than this is spooled to a temporary file. Default 1 MiB. */
  spoolMemoryBytes?: number;
  passAuth?: boolean;
  isindexArgs?: boolean;
  /** PATH given to scripts. */
  path?: string;
  /** Local redirects followed per request before giving up with 500. Default 10. */
  maxRedirects?: number;
}

// Hop-by-hop fields describe one connection; Node frames the response itself.
const hopByHop = new Set(['connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'trailer', 'proxy-connection', 'te']);

export function cgiRoute(options: CgiRouteOptions): Route {
  const { host, scripts } = options;
  const maxRedirects = options.maxRedirects ?? 10;
  const spoolMemory = options.spoolMemoryBytes ?? 1024 * 1024;

  return {
    prefix: scripts.prefix,
    async handle(request: RouteRequest) {
      const { req, res } = request;
      const target = request.target;
      const q = target.indexOf('?');
      const rawPath = q === -1 ? target : target.slice(0, q);
      const query = q === -1 ? '' : target.slice(q + 1);
      const location = resolveScript(scripts, rawPath);
      if (!location.ok) {
        if (request.expectsContinue) res.setHeader('connection', 'close');
        return request.error(location.status);
      }

      // §4.2: the body, if any (never after a local redirect, which is a GET).
      let body: Readable | null = null;
      let contentLength: number | undefined;
      let cleanup: (() => void) | undefined;
      if (request.redirects === 0 && requestHasBody(req)) {
        const declared = req.headers['content-length'];
        if (declared !== undefined && req.headers['transfer-encoding'] === undefined) {
          contentLength = Number(declared);
          if (contentLength > options.maxBody) return refuseBody(request);
          if (request.expectsContinue) res.writeContinue();
          if (contentLength > 0) body = req;
        } else {
          // Chunked: the script must be told the length (CONTENT_LENGTH), so the body is read first.
          if (request.expectsContinue) res.writeContinue();
          const spooled = await spoolBody(req, options.maxBody, spoolMemory);
          if (!spooled.ok) {
            spooled.cleanup();
            if (spooled.reason === 'too-large') return refuseBody(request);
            if (spooled.reason === 'storage') return refuseStorage(request, spooled.error);
            return; // the client went away
          }
          contentLength = spooled.body.length;
          if (contentLength > 0) body = spooled.body.stream();
          cleanup = spooled.body.cleanup;
        }
      }
      if (cleanup) res.once('close', cleanup);

      const socket = req.socket;
      const facts: CgiRequestFacts = {
        method: request.method,
        requestUri: target,
        protocol: `HTTP/${req.httpVersion}`,
        headers: req.rawHeaders,
        scriptName: location.scriptName,
        pathInfo: location.pathInfo,
        scriptFilename: location.file,
        documentRoot: options.documentRoot,
        queryString: query,
        remoteAddr: plainAddress(socket.remoteAddress),
        remotePort: socket.remotePort ?? 0,
        serverAddr: plainAddress(socket.localAddress),
        serverPort: socket.localPort ?? 0,
        tls: (socket as TLSSocket).encrypted === true,
        contentLength,
        serverSoftware: options.serverSoftware,
        passAuth: options.passAuth,
        path: options.path,
        // After a local redirect, Apache's names for where the request first went.
        extra: request.redirects > 0 ? redirectVars(req.url ?? '/') : undefined,
      };
      let env: Record<string, string>;
      try {
        env = cgiEnv(facts);
      } catch (err) {
        if (err instanceof CgiEnvError) {
          body?.resume();
          return request.error(400);
        }
        throw err;
      }
      const args = options.isindexArgs ? isindexArgs(query) : [];
      const name = location.name;
      const outcome = await host.run({
        file: location.file,
        args,
        env,
        body,
        signal: request.signal,
        nph: name.startsWith('nph-'),
        onStderrLine: (line) => logError(`${name}: ${line}`),
      });

      if (outcome.kind === 'error') {
        if (outcome.status >= 500 && !request.signal.aborted) logError(outcome.message, { target: location.scriptName });
        body?.resume();
        return request.error(outcome.status);
      }
      const { head } = outcome;
      const scriptBody = outcome.body;
      if (head.kind === 'local-redirect') {
        // §6.2.2: the server serves the new path itself, as a GET; the script's body is dropped.
        scriptBody.resume();
        if (request.redirects >= maxRedirects) {
          logError(`cgi: more than ${maxRedirects} local redirects, the last to ${head.location}`, { target: location.scriptName });
          return request.error(500);
        }
        return request.redirect(head.location!);
      }
      if (head.nph) return sendRaw(request, head, scriptBody);
      sendResponse(request, head, scriptBody, location.scriptName);
    },
  };
}

function requestHasBody(req: IncomingMessage): boolean {
  return req.headers['transfer-encoding'] !== undefined || req.headers['content-length'] !== undefined;
}

function refuseBody(request: RouteRequest): void {
  // The body stays unread, so the connection cannot carry another request.
  request.res.setHeader('connection', 'close');
  request.error(413);
}

/** The chunked body could not be spooled (disk full): 507, and the rest of it is not read. */
export function refuseStorage(request: RouteRequest, error: string | undefined): void {
  logError(`http: cannot spool the request body: ${error ?? 'write failed'}`, { uri: request.req.url });
  request.res.setHeader('connection', 'close');
  request.error(507, 'the request body could not be stored');
}

function plainAddress(address: string | undefined): string {
  if (!address) return '';
  return address.startsWith('::ffff:') && address.includes('.') ? address.slice(7) : address;
}

function redirectVars(originalTarget: string): Record<string, string> {
  const q = originalTarget.indexOf('?');
  const vars: Record<string, string> = { REDIRECT_URL: q === -1 ? originalTarget : originalTarget.slice(0, q) };
  if (q !== -1) vars.REDIRECT_QUERY_STRING = originalTarget.slice(q + 1);
  return vars;
}

/** Status line and headers from the script's head, then its body as it arrives. */
function sendResponse(request: RouteRequest, head: CgiHead, body: Readable, scriptName: string): void {
  const { res } = request;
  const fields: string[] = [];
  for (const [name, value] of head.headers) {
    const lower = name.toLowerCase();
    if (hopByHop.has(lower)) continue;
    // A Content-Length is kept only when it is a single valid number, and then enforced below.
    if (lower === 'content-length' && head.contentLength === undefined) continue;
    fields.push(name, value);
  }
  try {
    res.writeHead(head.status, head.reason, fields);
  } catch (err) {
    body.destroy();
    logError(`cgi: the script's headers cannot be sent: ${(err as Error).message}`, { target: scriptName });
    return request.error(502);
  }
  const limit = head.contentLength;
  // Node sends no body for HEAD (and 204/304); the log counts what was sent.
  const counted = request.req.method !== 'HEAD' && head.status !== 204 && head.status !== 304;
  let sent = 0;
  const onData = (chunk: Buffer) => {
    if (limit !== undefined && sent + chunk.length > limit) {
      // More than the script announced: the excess would be read as the next response.
      chunk = chunk.subarray(0, limit - sent);
      logError(`cgi: the script wrote more than its Content-Length of ${limit}`, { target: scriptName });
      body.off('data', onData);
      body.destroy();
      sent += chunk.length;
      if (counted) request.bytes += chunk.length;
      res.end(chunk);
      return;
    }
    sent += chunk.length;
    if (counted) request.bytes += chunk.length;
    if (!res.write(chunk)) {
      body.pause();
      res.once('drain', () => body.resume());
    }
  };
  body.on('data', onData);
  body.once('end', () => {
    if (limit !== undefined && sent < limit && request.method !== 'HEAD' && head.status !== 204 && head.status !== 304) {
      // Fewer bytes than announced: end the connection, so the client sees a cut response rather
      // than waiting for bytes that will never come.
      logError(`cgi: the script wrote ${sent} of its Content-Length of ${limit} bytes`, { target: scriptName });
      cut(res);
      return;
    }
    res.end();
  });
  // Killed mid-way (timeout) or the client left: the response is cut, not completed.
  body.once('error', () => cut(res));
  res.once('close', () => {
    if (!body.readableEnded) body.destroy();
  });
}

/**
 * Ends a response that cannot be completed: what was written is flushed, then the connection is
 * closed, so the client sees a short body (or a chunked body without its last chunk).
 */
function cut(res: ServerResponse): void {
  const socket = res.socket;
  if (socket && !socket.destroyed) {
    // writeHead only stores the head: with no body byte written yet it would never leave, and the
    // client would see a connection closed without any answer.
    res.flushHeaders();
    socket.end();
  } else res.destroy();
}

/**
 * An nph- script wrote the whole HTTP response: its bytes go to the connection as they are, and the
 * connection closes after them, since nothing says where such a response ends. The one change:
 * "Connection: close" is added when the script did not say, or a keep-alive client (a proxy's
 * upstream pool) would send its next request on a connection about to close.
 */
function sendRaw(request: RouteRequest, head: CgiHead, body: Readable): void {
  const { res } = request;
  const socket = res.socket;
  request.loggedStatus = head.status;
  if (!socket) {
    body.destroy();
    return;
  }
  let raw = head.raw;
  if (!head.headers.some(([name]) => name.toLowerCase() === 'connection')) {
    const blank = raw[raw.length - 2] === 0x0d ? 2 : 1;
    raw = Buffer.concat([raw.subarray(0, raw.length - blank), Buffer.from('Connection: close\r\n'), raw.subarray(raw.length - blank)]);
  }
  request.bytes += raw.length;
  socket.write(raw);
  // The stream starts with the header block as the script wrote it: sent above, amended.
  let skip = head.raw.length;
  body.on('data', (chunk: Buffer) => {
    if (skip > 0) {
      const n = Math.min(skip, chunk.length);
      skip -= n;
      chunk = chunk.subarray(n);
      if (chunk.length === 0) return;
    }
    request.bytes += chunk.length;
    if (!socket.write(chunk)) {
      body.pause();
      socket.once('drain', () => body.resume());
    }
  });
  // The script framed the response itself, so only closing the connection ends it.
  body.once('end', () => socket.end());
  body.once('error', () => socket.destroy());
  res.once('close', () => {
    if (!body.readableEnded) body.destroy();
  });
}
