// The app the soak and fault runs serve through the FastCGI responder: a small answer, a body checksum, a streamed answer, and a route that fails on demand.
import { createHash } from 'node:crypto';
import { streamChunk } from './payload.ts';

const encoder = new TextEncoder();

export default {
  async fetch(request: Request): Promise<Response> {
    const url = new URL(request.url);
    const route = url.pathname.slice(url.pathname.lastIndexOf('/') + 1);
    const q = url.searchParams;
    switch (route) {
      case 'hello':
        return new Response('hello\n', { headers: { 'content-type': 'text/plain' } });
      case 'echo': {
        // Read piece by piece, as an app that processes an upload would, and answer its checksum.
        const hash = createHash('sha256');
        let size = 0;
        for await (const chunk of request.body ?? []) {
          hash.update(chunk as Uint8Array);
          size += (chunk as Uint8Array).byteLength;
        }
        return Response.json({ size, sha256: hash.digest('hex') });
      }
      case 'stream': {
        const chunks = Number(q.get('chunks') ?? 16);
        const size = Number(q.get('size') ?? 4096);
        let i = 0;
        const body = new ReadableStream<Uint8Array>({
          async pull(controller) {
            if (i === chunks) return controller.close();
            // One chunk per event-loop turn: the answer is produced while it is being sent.
            await new Promise((resolve) => setImmediate(resolve));
            controller.enqueue(streamChunk(i++, size));
          },
        });
        return new Response(body, { headers: { 'content-type': 'application/octet-stream' } });
      }
      case 'flaky':
        // The client asks for the failure, so it knows which answers must be 500 and which 200.
        if (q.get('throw') === 'sync') throw new Error('flaky: thrown on request');
        if (q.get('throw') === 'async') {
          await new Promise((resolve) => setImmediate(resolve));
          throw new Error('flaky: rejected on request');
        }
        return new Response(encoder.encode('fine\n'), { headers: { 'content-type': 'text/plain' } });
      case 'sleep':
        await new Promise((resolve) => setTimeout(resolve, Number(q.get('ms') ?? 100)));
        return new Response('slept\n');
      case 'pid':
        return new Response(`${process.pid}\n`);
      default:
        return new Response('not found\n', { status: 404 });
    }
  },
};
