// The /cgi-bin/ route: turns an HTTP request into a CGI invocation (script, environment, body) for the host, and the script's response back into HTTP (RFC 3875 §6).
import type { ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import { isindexArgs } from '../cgi/env.ts';
import type { CgiHost } from '../cgi/host.ts';
import type { CgiHead } from '../cgi/response.ts';
import { resolveScript, type ScriptDirectory } from '../cgi/resolve.ts';
import { logError } from '../log.ts';
import { requestInput } from './cgi-request.ts';
import { writeResponseHead } from './cgi-response-writer.ts';
import type { Route, RouteRequest } from './server.ts';

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

export function cgiRoute(options: CgiRouteOptions): Route {
  const { host, scripts } = options;
  const maxRedirects = options.maxRedirects ?? 10;
  const spoolMemory = options.spoolMemoryBytes ?? 1024 * 1024;

  return {
    prefix: scripts.prefix,
    async handle(request: RouteRequest) {
      const { res } = request;
      const target = request.target;
      const q = target.indexOf('?');
      const rawPath = q === -1 ? target : target.slice(0, q);
      const query = q === -1 ? '' : target.slice(q + 1);
      const location = resolveScript(scripts, rawPath);
      if (!location.ok) {
        if (request.expectsContinue) res.setHeader('connection', 'close');
        return request.error(location.status);
      }

      const input = await requestInput(
        request,
        { scriptName: location.scriptName, pathInfo: location.pathInfo, scriptFilename: location.file, documentRoot: options.documentRoot, queryString: query },
        options,
        options.maxBody,
        spoolMemory,
      );
      if (!input) return;
      const { body, env } = input;
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

/** Status line and headers from the script's head, then its body as it arrives. */
function sendResponse(request: RouteRequest, head: CgiHead, body: Readable, scriptName: string): void {
  const { res } = request;
  if (!writeResponseHead(request, head, body, "cgi: the script's headers", scriptName)) return;
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
