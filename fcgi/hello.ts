// The smallest app: answers "hello" as text. The same handler runs as CGI through cgi-bin/hello.ts.
export default {
  fetch(): Response {
    return new Response('hello\n', { headers: { 'content-type': 'text/plain; charset=utf-8' } });
  },
};
