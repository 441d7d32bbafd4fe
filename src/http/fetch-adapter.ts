// Serves a Fetch-style app on node:http directly (no gateway): the "same app, plain node:http" comparison.
import type { IncomingMessage, ServerResponse } from 'node:http';
import { Readable } from 'node:stream';
import { createLazyRequest, LazyAppContext, type App } from '../handler.ts';
import { LazyAbort } from '../lazy-abort.ts';
import { lightweightParts, type LightweightParts } from '../lightweight-response.ts';
import { forEachLightweightHeader, plainBody } from '../response-output.ts';
import { logError } from '../log.ts';

/**
 * The params a web server would send for this request, so the app sees the same `context.params`
 * and the same lazy Request as behind FastCGI.
 */
function paramsOf(req: IncomingMessage): Record<string, string> {
  const params: Record<string, string> = {
    REQUEST_METHOD: req.method ?? 'GET',
    REQUEST_URI: req.url ?? '/',
    SERVER_PROTOCOL: `HTTP/${req.httpVersion}`,
    REMOTE_ADDR: req.socket.remoteAddress ?? '',
  };
  const raw = req.rawHeaders;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i].toUpperCase().replace(/-/g, '_');
    const key = name === 'CONTENT_TYPE' || name === 'CONTENT_LENGTH' ? name : 'HTTP_' + name;
    params[key] = params[key] === undefined ? raw[i + 1] : `${params[key]}, ${raw[i + 1]}`;
  }
  return params;
}

/**
 * Status and headers straight from the Response into node:http, as a server built on node:http
 * would write them: no CGI header block in between (that is the gateway's cost, not this path's).
 */
function writeHead(res: ServerResponse, response: Response, light: LightweightParts | undefined, contentLength?: number): void {
  const headers: string[] = [];
  const push = (name: string, value: string) => {
    headers.push(name, value);
  };
  // Read from the lightweight form's init while it holds: asking the Response itself builds the real one.
  const fromInit = light !== undefined && forEachLightweightHeader(light, push);
  if (!fromInit) {
    headers.length = 0;
    for (const [name, value] of response.headers) if (name !== 'set-cookie') push(name, value);
    for (const cookie of response.headers.getSetCookie()) push('set-cookie', cookie);
  }
  if (contentLength !== undefined) headers.push('content-length', String(contentLength));
  res.writeHead(response.status, (fromInit ? light.statusText : response.statusText) || undefined, headers);
}

export function fetchRequestListener(app: App): (req: IncomingMessage, res: ServerResponse) => void {
  return (req, res) => {
    const params = paramsOf(req);
    const abort = new LazyAbort();
    res.on('close', () => {
      if (!res.writableFinished) abort.abort(new Error('client closed the connection'));
    });
    const request = createLazyRequest({ params, abort, body: () => Readable.toWeb(req) as unknown as ReadableStream<Uint8Array> });
    const context = new LazyAppContext(params, 'responder', abort);
    Promise.resolve()
      .then(() => app.fetch(request, context))
      .then(async (response) => {
        // The lightweight form's parts, read once for the body and the head.
        const light = lightweightParts(response);
        const body = req.method === 'HEAD' ? null : plainBody(response, light);
        if (body !== undefined) {
          writeHead(res, response, light, body === null ? 0 : typeof body === 'string' ? Buffer.byteLength(body) : body.byteLength);
          res.end(body ?? undefined);
          return;
        }
        writeHead(res, response, light);
        for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>) {
          if (!res.write(chunk)) await new Promise((resolve) => res.once('drain', resolve));
        }
        res.end();
      })
      .catch((err) => {
        logError(`app: request failed: ${(err as Error)?.stack ?? err}`);
        if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain; charset=utf-8' }).end('Internal Server Error\n');
        else res.destroy();
      });
  };
}
