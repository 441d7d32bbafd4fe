// Reports what the app was given: method, URL, headers and the body's size, as JSON.
import type { AppContext } from '../src/handler.ts';

export default {
  async fetch(request: Request, context: AppContext): Promise<Response> {
    let bodySize = 0;
    if (request.body) {
      for await (const chunk of request.body) bodySize += (chunk as Uint8Array).byteLength;
    }
    const report = {
      method: request.method,
      url: request.url,
      headers: Object.fromEntries(request.headers),
      bodySize,
      role: context.role,
    };
    return Response.json(report);
  },
};
