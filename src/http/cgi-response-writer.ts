// Sends a CGI or FastCGI response to a node:http client: the status line and header fields (RFC 3875 §6), then the body as it arrives, held to its Content-Length.
import type { ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import type { CgiHead } from '../cgi/response.ts';
import { logError } from '../log.ts';
import type { RouteRequest } from './server.ts';

// Hop-by-hop fields describe one connection; Node frames the response itself.
const hopByHop = new Set(['connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'trailer', 'proxy-connection', 'te']);

/** A response's body: a stream, and perhaps all of it at once when it is already complete (see CgiResponse in src/cgi/host.ts). */
export interface ResponseBody {
  readonly body: Readable;
  takeWhole?(): Buffer | undefined;
}

/** Who wrote the response, for the log: "cgi: the script" or "fastcgi: the app", and the script's name. */
export interface ResponseSource {
  who: string;
  target: string;
}

/**
 * Sends `head` without its hop-by-hop fields. When Node refuses the head (an invalid field), the
 * body is dropped, the failure logged, the client gets 502, and the result is false.
 */
function writeResponseHead(request: RouteRequest, head: CgiHead, body: Readable | undefined, source: ResponseSource, contentLength?: number): boolean {
  const fields: string[] = [];
  if (contentLength !== undefined) fields.push('Content-Length', String(contentLength));
  for (const [name, value] of head.headers) {
    const lower = name.toLowerCase();
    if (hopByHop.has(lower)) continue;
    // A Content-Length is kept only when it is a single valid number (and then enforced by the caller).
    if (lower === 'content-length' && head.contentLength === undefined) continue;
    fields.push(name, value);
  }
  try {
    request.res.writeHead(head.status, head.reason, fields);
  } catch (err) {
    body?.destroy();
    logError(`${source.who}'s headers cannot be sent: ${(err as Error).message}`, { target: source.target });
    request.error(502);
    return false;
  }
  return true;
}

/** Status line and headers from the head, then the body as it arrives; a body that breaks off cuts the response. */
export function sendResponse(request: RouteRequest, head: CgiHead, output: ResponseBody, source: ResponseSource): void {
  const { res } = request;
  const limit = head.contentLength;
  const bodyless = head.status === 204 || head.status === 304;
  // Node sends no body for HEAD (and 204/304); the log counts what was sent.
  const counted = request.req.method !== 'HEAD' && !bodyless;
  // The script already wrote all of it (a small answer, usually): one write, with its length.
  const whole = limit === undefined && head.status >= 200 && !bodyless ? output.takeWhole?.() : undefined;
  if (whole !== undefined) {
    if (!writeResponseHead(request, head, undefined, source, whole.length)) return;
    if (counted) request.bytes += whole.length;
    res.end(whole);
    return;
  }
  const body = output.body;
  if (!writeResponseHead(request, head, body, source)) return;
  let sent = 0;
  const onData = (chunk: Buffer) => {
    if (limit !== undefined && sent + chunk.length > limit) {
      // More than announced: the excess would be read as the next response.
      chunk = chunk.subarray(0, limit - sent);
      logError(`${source.who} wrote more than its Content-Length of ${limit}`, { target: source.target });
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
    if (limit !== undefined && sent < limit && request.method !== 'HEAD' && !bodyless) {
      // Fewer bytes than announced: end the connection, so the client sees a cut response rather
      // than waiting for bytes that will never come.
      logError(`${source.who} wrote ${sent} of its Content-Length of ${limit} bytes`, { target: source.target });
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
