// Runs a Fetch handler as a CGI script: the environment and stdin become a Request, and the Response is written to stdout as a CGI response (RFC 3875 §4, §6).
import type { App, AppContext } from '../handler.ts';
import { createLazyRequest } from '../handler.ts';
import { lightweightParts } from '../lightweight-response.ts';
import { cgiHeaderBlock, plainBody } from '../response-output.ts';

function write(chunk: string | Uint8Array): Promise<void> {
  return new Promise((resolve, reject) => {
    process.stdout.write(chunk, (err) => (err ? reject(err) : resolve()));
  });
}

/**
 * The request body: stdin, but never more than CONTENT_LENGTH bytes (§4.2: the server need not
 * send EOF after the body, so reading past it could block forever).
 */
function stdinBody(length: number): ReadableStream<Uint8Array> {
  let left = length;
  const stdin = process.stdin;
  return new ReadableStream<Uint8Array>({
    start(controller) {
      if (left === 0) return controller.close();
      const onData = (chunk: Buffer) => {
        const part = chunk.length > left ? chunk.subarray(0, left) : chunk;
        left -= part.length;
        controller.enqueue(new Uint8Array(part.buffer, part.byteOffset, part.length));
        if (left === 0) {
          stdin.off('data', onData);
          stdin.pause();
          controller.close();
        } else if ((controller.desiredSize ?? 1) <= 0) {
          stdin.pause();
        }
      };
      stdin.on('data', onData);
      stdin.once('end', () => {
        // Fewer bytes than announced: the body ends where the data did.
        if (left > 0) controller.close();
      });
      stdin.once('error', (err) => controller.error(err));
    },
    pull() {
      if (left > 0) stdin.resume();
    },
    cancel() {
      stdin.destroy();
    },
  });
}

/**
 * Serves one request with `app` and writes the response to stdout. The exit code is 0 even when
 * the app fails: the failure is a 500 response, and the message goes to stderr.
 */
export async function runCgi(app: App): Promise<void> {
  const params: Record<string, string> = {};
  for (const [name, value] of Object.entries(process.env)) if (value !== undefined) params[name] = value;
  const controller = new AbortController();
  // The server kills a script whose client went away (or that ran too long): SIGTERM is that news.
  process.once('SIGTERM', () => {
    controller.abort(new Error('cgi: terminated'));
    process.exit(143);
  });
  const length = Number(params.CONTENT_LENGTH);
  const hasBody = Number.isSafeInteger(length) && length > 0;
  const request = createLazyRequest({
    params,
    abort: controller,
    body: hasBody ? () => stdinBody(length) : null,
  });
  const context: AppContext = { params, role: 'responder', signal: controller.signal };

  let response: Response;
  try {
    response = await app.fetch(request, context);
    if (!(response instanceof Response)) throw new TypeError('the app did not return a Response');
  } catch (err) {
    process.stderr.write(`cgi: the app failed: ${(err as Error)?.stack ?? String(err)}\n`);
    response = new Response('500 Internal Server Error\n', { status: 500, headers: { 'content-type': 'text/plain; charset=utf-8' } });
  }

  // The lightweight form's parts, read once for the head and the body.
  const light = lightweightParts(response);
  // Header values are byte strings: one character per byte.
  const head = Buffer.from(cgiHeaderBlock(response, light), 'latin1');
  const isHead = params.REQUEST_METHOD === 'HEAD';
  const plain = isHead ? null : plainBody(response, light);
  if (plain === null || plain === undefined) {
    await write(head);
    if (plain === undefined && response.body) {
      // Streamed: each chunk reaches the server as the app produces it.
      for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>) await write(chunk);
    } else if (isHead && !light) {
      // A lightweight Response has no stream to cancel; asking for one would build it.
      await response.body?.cancel();
    }
  } else {
    // Head and body in one write: one syscall, and the server sees the whole response at once.
    await write(Buffer.concat([head, typeof plain === 'string' ? Buffer.from(plain) : plain]));
  }
}
