// Runs a Fetch-style app on plain node:http (`--app FILE --port N`), for comparing the responder with no gateway protocol at all.
import http from 'node:http';
import { parseArgs } from 'node:util';
import { loadApp } from '../handler.ts';
import { fetchRequestListener } from '../http/fetch-adapter.ts';
import { installLightweightResponse } from '../lightweight-response.ts';

const { values } = parseArgs({ options: { app: { type: 'string' }, port: { type: 'string' }, host: { type: 'string', default: '127.0.0.1' } } });
const port = Number(values.port);
if (!values.app || !Number.isInteger(port) || port <= 0) {
  process.stderr.write('bench: http-app needs --app FILE --port N\n');
  process.exit(2);
}
installLightweightResponse();
const app = await loadApp(values.app);
const server = http.createServer(fetchRequestListener(app));
server.keepAliveTimeout = 120_000;
server.listen(port, values.host, () => process.stdout.write(`listening on ${values.host}:${port}\n`));
