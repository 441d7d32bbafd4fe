// The /cgi-bin/ route: turns an HTTP request into a CGI invocation (script, environment, body) for the host, and the script's response back into HTTP (RFC 3875 §6).
import type { Readable } from 'node:stream';
import { isindexArgs } from '../cgi/env.ts';
import type { CgiHost } from '../cgi/host.ts';
import type { CgiHead } from '../cgi/response.ts';
import { resolveScript, type ScriptDirectory, type ScriptLocation } from '../cgi/resolve.ts';
import { logError } from '../log.ts';
import { requestInput, type InputSettings, type RequestInput } from './cgi-request.ts';
import { sendResponse } from './cgi-response-writer.ts';
import type { Route, RouteRequest } from './server.ts';

/** What the CGI route needs besides the body and environment settings it shares with the FastCGI route. */
export interface CgiRouteOptions extends InputSettings {
  host: CgiHost;
  /** The script directory and the URL prefix it is served at. */
  scripts: ScriptDirectory;
  documentRoot: string;
  isindexArgs?: boolean;
  /** Local redirects followed per request before giving up with 500. Default 10. */
  maxRedirects?: number;
}

export function cgiRoute(options: CgiRouteOptions): Route {
  const { host, scripts } = options;
  const maxRedirects = options.maxRedirects ?? 10;

  /** Runs the script with its input and sends what it answers. */
  const runScript = async (request: RouteRequest, location: ScriptLocation, query: string, input: RequestInput): Promise<void> => {
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
      onStderrLine(line) {
        logError(`${name}: ${line}`);
      },
      onLateKill(message) {
        logError(message, { target: location.scriptName });
      },
    });

    if (outcome.kind === 'error') {
      if (outcome.status >= 500 && !request.signal.aborted) logError(outcome.message, { target: location.scriptName });
      body?.resume();
      return request.error(outcome.status);
    }
    const { head } = outcome;
    if (head.kind === 'local-redirect') {
      // §6.2.2: the server serves the new path itself, as a GET; the script's body is dropped.
      outcome.discard('local-redirect');
      if (request.redirects >= maxRedirects) {
        logError(`cgi: more than ${maxRedirects} local redirects, the last to ${head.location}`, { target: location.scriptName });
        return request.error(500);
      }
      return request.redirect(head.location!);
    }
    if (head.nph) return sendRaw(request, head, outcome.body);
    sendResponse(request, head, outcome, { who: 'cgi: the script', target: location.scriptName });
  };

  return {
    prefix: scripts.prefix,
    handle(request: RouteRequest) {
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
      const input = requestInput(
        request,
        { scriptName: location.scriptName, pathInfo: location.pathInfo, scriptFilename: location.file, documentRoot: options.documentRoot, queryString: query },
        options,
      );
      // Only a chunked body makes this wait (it is spooled first).
      if (input instanceof Promise) return input.then((ready) => ready && runScript(request, location, query, ready));
      if (input) return runScript(request, location, query, input);
    },
  };
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
  body.on('data', (chunk: Buffer) => {
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
