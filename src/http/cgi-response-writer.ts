// Writes the status line and header fields of a CGI or FastCGI response head to a node:http response (RFC 3875 §6).
import type { Readable } from 'node:stream';
import type { CgiHead } from '../cgi/response.ts';
import { logError } from '../log.ts';
import type { RouteRequest } from './server.ts';

// Hop-by-hop fields describe one connection; Node frames the response itself.
const hopByHop = new Set(['connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'trailer', 'proxy-connection', 'te']);

/**
 * Sends `head` without its hop-by-hop fields. When Node refuses the head (an invalid field), the
 * body is dropped, the failure logged as "WHAT cannot be sent", the client gets 502, and the result
 * is false.
 */
export function writeResponseHead(request: RouteRequest, head: CgiHead, body: Readable, what: string, scriptName: string): boolean {
  const fields: string[] = [];
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
    body.destroy();
    logError(`${what} cannot be sent: ${(err as Error).message}`, { target: scriptName });
    request.error(502);
    return false;
  }
  return true;
}
