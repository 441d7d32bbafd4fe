// The floor of a Node CGI host: a node:http server that runs one fixed script per request through the runner's native addon and answers with its output, and does nothing else.
//
//   node --import tsx src/bench/cgi-floor.ts --port N --script /abs/path/hello.sh
//
// No path resolution, no request environment beyond a few fixed variables, no CGI host (cap,
// queue, timeout, streams, stderr), no header parsing beyond the blank line, no access log: what
// `serve` costs beyond this is the runner's own work per request. `npm run bench:cgi` measures it
// against `serve` and lighttpd. Not a server for anything else: every request gets the same script,
// and a script that cannot start or writes no header block is answered 502.
import http from 'node:http';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { loadSpawnAddon, SpawnEvent } from '../cgi/native-spawner.ts';

const { values } = parseArgs({ options: { port: { type: 'string' }, host: { type: 'string', default: '127.0.0.1' }, script: { type: 'string' } } });
const port = Number(values.port);
if (!Number.isInteger(port) || port <= 0 || !values.script || !path.isAbsolute(values.script)) {
  process.stderr.write('bench: cgi-floor needs --port N --script /absolute/path\n');
  process.exit(2);
}
const addon = loadSpawnAddon();
if (addon instanceof Error) {
  process.stderr.write(`bench: cgi-floor: ${addon.message}\n`);
  process.exit(1);
}
const script = values.script;
const cwd = path.dirname(script);
const env = `PATH=/usr/bin:/bin\0GATEWAY_INTERFACE=CGI/1.1\0REQUEST_METHOD=GET\0QUERY_STRING=\0SCRIPT_FILENAME=${script}\0`;
const blankLine = Buffer.from('\n\n');
const blankCrLf = Buffer.from('\r\n\r\n');

/** One request: the script's output until both its stdout has ended and it has exited. */
class Pending {
  private readonly chunks: Buffer[] = [];
  private ended = false;
  private exited = false;
  private answered = false;

  constructor(private readonly res: http.ServerResponse) {}

  onEvent(kind: SpawnEvent, a: unknown): void {
    if (kind === SpawnEvent.Stdout) this.chunks.push(a as Buffer);
    else if (kind === SpawnEvent.StdoutEnd) this.ended = true;
    else if (kind === SpawnEvent.Exit) this.exited = true;
    else if (kind === SpawnEvent.Failed) this.exited = this.ended = true;
    // Stderr's end may still come after both.
    if (this.ended && this.exited && !this.answered) this.answer();
  }

  private answer(): void {
    this.answered = true;
    const out = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
    const crlf = out.indexOf(blankCrLf);
    const lf = out.indexOf(blankLine);
    const end = crlf !== -1 && (lf === -1 || crlf < lf) ? crlf + 4 : lf !== -1 ? lf + 2 : -1;
    if (end === -1) {
      this.res.writeHead(502, ['Content-Length', '0']);
      this.res.end();
      return;
    }
    const type = /^content-type:[ \t]*(.*?)\r?$/im.exec(out.subarray(0, end).toString('latin1'));
    const body = out.subarray(end);
    this.res.writeHead(200, ['Content-Type', type ? type[1]! : 'text/plain', 'Content-Length', String(body.length)]);
    this.res.end(body);
  }
}

addon.setEventHandler((target, kind, a) => {
  const pending = target as unknown as Pending;
  if (kind !== SpawnEvent.Batch) return pending.onEvent(kind, a);
  const events = a as unknown[];
  for (let i = 0; i < events.length; i += 3) pending.onEvent(events[i] as SpawnEvent, events[i + 1]);
});

const argv = [script];
const server = http.createServer((_req, res) => {
  // The same first-read delay as `serve` (see NativeSpawner): a script that exits within it is read once.
  try {
    addon.spawn(script, argv, env, cwd, false, false, new Pending(res) as never, 5);
  } catch (err) {
    // Refused before any spawn (out of descriptors or memory).
    process.stderr.write(`bench: cgi-floor: ${(err as Error).message}\n`);
    res.writeHead(502, ['Content-Length', '0']);
    res.end();
  }
});
// A benchmark holds its connections open between rounds: no idle timeout should close them.
server.keepAliveTimeout = 120_000;
server.listen(port, values.host, () => process.stdout.write(`listening on ${values.host}:${port}\n`));
