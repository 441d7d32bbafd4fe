// The "no gateway at all" floor: a plain node:http server answering every request with the same body as fcgi/hello.ts.
import http from 'node:http';
import { parseArgs } from 'node:util';

const { values } = parseArgs({ options: { port: { type: 'string' }, host: { type: 'string', default: '127.0.0.1' } } });
const port = Number(values.port);
if (!Number.isInteger(port) || port <= 0) {
  process.stderr.write('bench: http-hello needs --port N\n');
  process.exit(2);
}

const body = Buffer.from('hello\n');
const server = http.createServer((_req, res) => {
  res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8', 'content-length': body.length });
  res.end(body);
});
// A benchmark holds its connections open between rounds: no idle timeout should close them.
server.keepAliveTimeout = 120_000;
server.listen(port, values.host, () => process.stdout.write(`listening on ${values.host}:${port}\n`));
