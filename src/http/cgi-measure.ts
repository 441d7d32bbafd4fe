// Measures `serve` on cgi-bin/hello.sh: the runner's own overhead per request against a bare spawn of the same script (in alternation, and in runs of consecutive requests, one run), and requests/s with wrk against lighttpd mod_cgi, Apache mod_cgid and the floor of a Node CGI host (src/bench/cgi-floor.ts).
//
//   npm run bench:cgi -- [--requests 2000] [--duration 10] [--rounds 3] [--warmup 1] [--warmup-requests 5000] [--json FILE] [--skip-throughput] [--pin] (see --help)
//
// Every server runs as its own process on a free port; rounds alternate between targets so that
// a noisy machine affects them alike.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { intFlag, numberFlag, parseScriptArgs } from '../command.ts';
import { serveNodeFlags } from '../node-flags.ts';
import { median, pairedComparison, type PairedComparison } from '../bench/histogram.ts';
import { pinTree, planPinning } from '../bench/pinning.ts';
import { loadSpawnAddon } from '../cgi/native-spawner.ts';
import { runWrk } from '../bench/wrk.ts';
import { findPeer, freePort, makeTempDir, startApache, startProcess, stop, waitForPort, type ManagedProcess } from '../peers/index.ts';

const execFileAsync = promisify(execFile);
const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

const values = parseScriptArgs({
  script: 'bench:cgi',
  summary:
    "The runner's overhead on cgi-bin/hello.sh against a bare spawn, request by request in alternation (and so too for a\n" +
    'spawn through the Python helper, a node:http hello, lighttpd mod_cgi and the floor of a Node CGI host), and for\n' +
    'serve, lighttpd and the floor in runs of 50 consecutive requests against runs of 50 bare spawns; then requests/s\n' +
    'with wrk at 1 and 16 connections against lighttpd mod_cgi and Apache mod_cgid, of serve with the Python helper and with\n' +
    'child_process.spawn (CGI_RUNNER_SPAWNER), and of the floor of a Node CGI host (src/bench/cgi-floor.ts: node:http\n' +
    'and the native addon, nothing else). Each kind, and each wrk run, follows an unmeasured warm-up (--warmup,\n' +
    '--warmup-requests).',
  flags: {
    requests: { type: 'string', valueName: 'N', default: '2000', description: 'requests of each kind in the overhead test' },
    duration: { type: 'string', valueName: 'SECONDS', default: '10', description: 'length of each wrk run' },
    rounds: { type: 'string', valueName: 'N', default: '3', description: 'interleaved rounds of the throughput test' },
    warmup: { type: 'string', valueName: 'SECONDS', default: '1', description: 'whole seconds unmeasured: of each kind before the overhead test (at least 50 pairs, even with 0), and a wrk run before each measured one' },
    'warmup-requests': { type: 'string', valueName: 'N', default: '5000', description: 'requests of each kind, unmeasured and back to back, before the pairs of its warm-up in the overhead test' },
    json: { type: 'string', valueName: 'FILE', description: 'write the figures as JSON' },
    'skip-throughput': { type: 'boolean', description: 'only the overhead test' },
    pin: { type: 'boolean', description: 'in the throughput test, the servers and their scripts on one core and wrk on another (taskset), as in `npm run bench`' },
  },
});
const requests = intFlag(values, 'requests', 1);
const duration = numberFlag(values, 'duration');
const rounds = intFlag(values, 'rounds', 1);
const warmup = intFlag(values, 'warmup', 0);
// A fresh Node server reaches its fastest form only after some thousands of requests: V8 compiles a
// function with TurboFan once it has run enough bytecode, and a function that runs once per request
// gets there late. `serve`, started with --trace-opt and sent requests back to back from one
// connection, was still compiling hot functions after 3,000 (149 of them by then, 166 by 6,000) and
// answered in 2.1 ms over its first 500 and 1.1 to 1.2 ms from 5,000 on; in alternation with a bare
// spawn its overhead fell from 1.2 ms over its first 1,000 requests to 0.4 ms from 2,000 on
// (2026-11-21). The overhead test measures a server as it runs for its users, warm.
const warmupRequests = intFlag(values, 'warmup-requests', 0);
/** Requests (and bare spawns) in a row in the second overhead test. */
const runLength = 50;

// The client of the overhead test: Python, so that neither side of the comparison pays for a Node
// client. It measures (1) a bare spawn of the script (posix_spawn, read stdout to EOF, wait) in
// alternation with each of: (2) the script spawned by a spawner helper of its own (spawner.py, the
// fallback `serve` starts scripts through when its native addon is not built), read to the end; (3)
// a request for it to `serve` (which starts it from its own process); (4) one to a plain node:http
// hello server; (5) when it is installed, one for the script to lighttpd; and (6) when the addon is
// built, one for it to the floor of a Node CGI host (src/bench/cgi-floor.ts); the requests over
// kept-alive connections. (4) is what any Node HTTP front costs; the rest of the overhead is the
// runner. (2) minus (1) is what a helper process would add; (5) minus (1), lighttpd's own overhead;
// (6) minus (1), what node:http and the addon alone cost.
const overheadClient = String.raw`
import json, os, re, socket, struct, subprocess, sys, time
port, script, n, helper_script, floor_port, peer_port, warmup, run_length, host_floor_port, warmup_requests = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7]), int(sys.argv[8]), int(sys.argv[9]), int(sys.argv[10])
env = {'PATH': os.environ.get('PATH', '/usr/bin:/bin'), 'GATEWAY_INTERFACE': 'CGI/1.1', 'REQUEST_METHOD': 'GET',
       'SCRIPT_NAME': '/cgi-bin/hello.sh', 'QUERY_STRING': '', 'SERVER_PROTOCOL': 'HTTP/1.1', 'SERVER_NAME': '127.0.0.1',
       'SERVER_PORT': str(port), 'REMOTE_ADDR': '127.0.0.1', 'REMOTE_PORT': '40000', 'REQUEST_URI': '/cgi-bin/hello.sh',
       'SCRIPT_FILENAME': script, 'DOCUMENT_ROOT': os.path.dirname(os.path.dirname(script)), 'HTTP_HOST': '127.0.0.1'}
cwd = os.path.dirname(script)
def connect(p):
    sock = socket.create_connection(('127.0.0.1', p))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock
def get(sock, path):
    sock.sendall(b'GET ' + path + b' HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
    buf = b''
    while True:
        data = sock.recv(65536)
        if not data:
            raise SystemExit('connection closed')
        buf += data
        end = buf.find(b'\r\n\r\n')
        if end < 0:
            continue
        head = buf[:end].lower()
        if b'transfer-encoding: chunked' in head:
            if buf.endswith(b'\r\n0\r\n\r\n'):
                return buf
        else:
            m = re.search(rb'content-length: *(\d+)', head)
            if m and len(buf) >= end + 4 + int(m.group(1)):
                return buf
serve_sock, floor_sock = connect(port), connect(floor_port)
peer_sock = connect(peer_port) if peer_port else None
host_floor_sock = connect(host_floor_port) if host_floor_port else None
def http():
    return get(serve_sock, b'/cgi-bin/hello.sh')
def peer():
    return get(peer_sock, b'/cgi-bin/hello.sh')
def floor():
    return get(floor_sock, b'/')
def host_floor():
    return get(host_floor_sock, b'/cgi-bin/hello.sh')
def bare():
    r, w = os.pipe()
    os.chdir(cwd)
    pid = os.posix_spawn(script, [script], env, file_actions=[(os.POSIX_SPAWN_DUP2, w, 1)], setsid=True)
    os.close(w)
    while os.read(r, 65536):
        pass
    os.close(r)
    os.waitpid(pid, 0)
# The helper's frames (see spawner.py): type, id, length, payload.
frame_header = struct.Struct('>cII')
helper = subprocess.Popen([sys.executable, '-I', '-S', helper_script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
events = bytearray()
def frame():
    global events
    while True:
        if len(events) >= 9:
            kind, _, size = frame_header.unpack_from(events)
            if len(events) >= 9 + size:
                del events[:9 + size]
                return kind
        events += os.read(helper.stdout.fileno(), 65536)
assert frame() == b'R'
spawn_payload = b'\0'.join([b'', cwd.encode(), script.encode(), b'1', script.encode()] + [('%s=%s' % kv).encode() for kv in env.items()])
spawn_id = 0
def spawned():
    # Until stdout has ended (what a response waits for) and the exit has been reported.
    global spawn_id
    spawn_id += 1
    os.write(helper.stdin.fileno(), frame_header.pack(b'R', spawn_id, len(spawn_payload)) + spawn_payload)
    seen = set()
    while not {b'Z', b'X'} <= seen:
        seen.add(frame())
# Each kind is measured in alternation with a bare spawn, request by request, and its overhead is
# taken against the bare spawns of its own pairs: between two of its requests only the bare spawn
# runs, as only its own scripts would on a server. Interleaving all five instead put three other
# servers between two requests of each, which pushes a process out of the caches, and a large one
# (Node's code and heap) more than a small one (lighttpd). Blocks of pairs rotate over the kinds, so
# that a machine whose speed drifts affects them alike. Even the one bare spawn between two requests
# does that, which a server that gets its requests back to back does not meet: hence the runs below.
kinds = [('helper', spawned), ('http', http), ('floor', floor)] + ([('peer', peer)] if peer_sock else []) + ([('hostFloor', host_floor)] if host_floor_sock else [])
# Unmeasured first: a Node server's code is compiled to its fastest form only after some thousands
# of requests (see warmupRequests), then pairs, so that the caches meet the test's pattern.
warmed = {}
for name, run in kinds:
    requests_done = 0
    while requests_done < warmup_requests:
        run()
        requests_done += 1
    until = time.perf_counter() + warmup
    pairs = 0
    while pairs < 50 or time.perf_counter() < until:
        bare()
        run()
        pairs += 1
    warmed[name] = {'requests': requests_done, 'pairs': pairs}
samples = {name: [] for name, _ in kinds}
bare_samples = {name: [] for name, _ in kinds}
block = 250
for start in range(0, n, block):
    for name, run in kinds:
        for i in range(start, min(n, start + block)):
            # Alternate which of the pair goes first, so neither always follows the other.
            pair = [('bare', bare), (name, run)] if i % 2 == 0 else [(name, run), ('bare', bare)]
            for which, f in pair:
                t0 = time.perf_counter()
                f()
                (bare_samples[name] if which == 'bare' else samples[name]).append(time.perf_counter() - t0)
# Then serve, lighttpd and the floor in runs: run_length consecutive requests, then as many consecutive bare
# spawns, and so on, as a server meets requests that come back to back. The first two of each run
# are left out: they pay for the switch from the other kind.
runs = {name: [] for name, _ in kinds if name in ('http', 'peer', 'hostFloor')}
run_bare = {name: [] for name in runs}
for start in range(0, n, run_length):
    for name, run in kinds:
        if name not in runs:
            continue
        for which, f in ((name, run), ('bare', bare)):
            for i in range(run_length):
                t0 = time.perf_counter()
                f()
                if i >= 2:
                    (run_bare[name] if which == 'bare' else runs[name]).append(time.perf_counter() - t0)
assert b'hello' in http()
helper.stdin.close()
helper.wait()
print(json.dumps({'kinds': samples, 'bare': bare_samples, 'runs': runs, 'runBare': run_bare, 'warmed': warmed}))
`;

interface Target {
  name: string;
  url: string;
  stop(): Promise<void>;
  pids(): number[];
}

function quantile(sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}


async function startServeProcess(name: string, cgiDir: string, env: Record<string, string> = {}): Promise<Target & { port: number }> {
  const port = await freePort();
  const proc = await startProcess({
    name,
    command: process.execPath,
    args: [...serveNodeFlags, '--import', 'tsx', 'src/cli.ts', 'serve', '--port', String(port), '--cgi-dir', cgiDir],
    cwd: repo,
    env: { ...process.env, ...env },
    // Its access lines go to /dev/null: read through a pipe, each one would wake this process, a
    // fifth process competing for the cores at every request (lighttpd and Apache here log none).
    stdout: 'ignore',
  });
  await waitForPort(port, '127.0.0.1', 30_000, proc.exitSignal);
  return { name, port, url: `http://127.0.0.1:${port}/cgi-bin/hello.sh`, stop: () => stop(proc), pids: () => [proc.pid] };
}

/** The plain node:http hello server of the benchmark: the latency of a Node HTTP front that runs nothing. */
async function startHttpHello(): Promise<Target & { port: number }> {
  const port = await freePort();
  const proc = await startProcess({ name: 'node:http hello', command: process.execPath, args: ['--import', 'tsx', 'src/bench/http-hello.ts', '--port', String(port)], cwd: repo, stdout: 'ignore' });
  await waitForPort(port, '127.0.0.1', 30_000, proc.exitSignal);
  return { name: 'node:http hello', port, url: `http://127.0.0.1:${port}/`, stop: () => stop(proc), pids: () => [proc.pid] };
}

/**
 * The floor of a Node CGI host (src/bench/cgi-floor.ts): node:http and the native addon running the
 * script, with the Node flags `serve` gets. What `serve` costs beyond it is the runner's own work.
 */
async function startCgiFloor(script: string): Promise<Target> {
  const port = await freePort();
  const proc = await startProcess({
    name: 'cgi floor',
    command: process.execPath,
    args: [...serveNodeFlags, '--import', 'tsx', 'src/bench/cgi-floor.ts', '--port', String(port), '--script', script],
    cwd: repo,
    stdout: 'ignore',
  });
  await waitForPort(port, '127.0.0.1', 30_000, proc.exitSignal);
  return { name: floorName, url: `http://127.0.0.1:${port}/cgi-bin/hello.sh`, stop: () => stop(proc), pids: () => [proc.pid] };
}
const floorName = 'node:http + addon, nothing else';

async function startLighttpd(cgiDir: string): Promise<Target> {
  const dir = await makeTempDir('lighttpd-');
  const port = await freePort();
  const conf = path.join(dir.path, 'lighttpd.conf');
  fs.writeFileSync(
    conf,
    `server.document-root = "${dir.path}"
server.port = ${port}
server.bind = "127.0.0.1"
server.modules = ("mod_alias", "mod_cgi")
server.pid-file = "${dir.path}/lighttpd.pid"
server.errorlog = "${dir.path}/error.log"
server.max-keep-alive-requests = 1000000
server.max-keep-alive-idle = 300
alias.url = ("/cgi-bin/" => "${cgiDir}/")
$HTTP["url"] =~ "^/cgi-bin/" { cgi.assign = ("" => "") }
`,
  );
  const proc: ManagedProcess = await startProcess({ name: 'lighttpd', command: findPeer('lighttpd') ?? 'lighttpd', args: ['-D', '-f', conf] });
  await waitForPort(port, '127.0.0.1', 10_000, proc.exitSignal);
  return {
    name: 'lighttpd mod_cgi',
    url: `http://127.0.0.1:${port}/cgi-bin/hello.sh`,
    pids: () => [proc.pid],
    async stop() {
      await stop(proc);
      await dir.cleanup();
    },
  };
}

async function startApacheCgid(cgiDir: string): Promise<Target> {
  const apache = await startApache({
    modules: ['cgid', 'alias'],
    accessLog: false, // lighttpd here writes none either
    config: `ScriptAlias /cgi-bin/ ${cgiDir}/\n<Directory ${cgiDir}>\n  Require all granted\n</Directory>\nKeepAliveTimeout 30\nMaxKeepAliveRequests 0`,
  });
  return { name: 'Apache mod_cgid', url: `${apache.url}/cgi-bin/hello.sh`, pids: () => [apache.pid], stop: () => apache.stop() };
}

async function main(): Promise<void> {
  // A directory every server can read, Apache's www-data children included.
  const scripts = await makeTempDir('cgi-measure-');
  const cgiDir = path.join(scripts.path, 'cgi-bin');
  fs.mkdirSync(cgiDir, { mode: 0o755 });
  fs.copyFileSync(path.join(repo, 'cgi-bin/hello.sh'), path.join(cgiDir, 'hello.sh'));
  fs.chmodSync(path.join(cgiDir, 'hello.sh'), 0o755);
  const script = path.join(cgiDir, 'hello.sh');
  const report: Record<string, unknown> = {
    machine: { cpus: os.availableParallelism(), model: os.cpus()[0]?.model, loadavg: os.loadavg(), node: process.version, kernel: os.release() },
  };

  const serve = await startServeProcess('serve', cgiDir);
  const targets: Target[] = [serve];
  /** Started for the overhead test only, not measured with wrk. */
  const background: Target[] = [];
  try {
    // 1. Overhead: the same script through serve, lighttpd, the helper, each in alternation with a bare spawn.
    const floor = await startHttpHello();
    background.push(floor);
    const lighttpd = findPeer('lighttpd') ? await startLighttpd(cgiDir) : undefined;
    if (lighttpd) background.push(lighttpd);
    const helperScript = path.join(repo, 'src/cgi/spawner.py');
    const peerPort = lighttpd ? new URL(lighttpd.url).port : '0';
    // The floor of a Node CGI host, in both tests: what a request costs with nothing of the runner's.
    const hostFloor = loadSpawnAddon() instanceof Error ? undefined : await startCgiFloor(script);
    if (hostFloor) background.push(hostFloor);
    const hostFloorPort = hostFloor ? new URL(hostFloor.url).port : '0';
    const { stdout } = await execFileAsync('python3', ['-c', overheadClient, String(serve.port), script, String(requests), helperScript, String(floor.port), peerPort, String(warmup), String(runLength), hostFloorPort, String(warmupRequests)], {
      maxBuffer: 64 * 1024 * 1024,
      timeout: 600_000,
    });
    type Kind = 'helper' | 'http' | 'floor' | 'peer' | 'hostFloor';
    type Stats = { median: number; p99: number };
    const samples = JSON.parse(stdout) as {
      kinds: Partial<Record<Kind, number[]>>;
      bare: Partial<Record<Kind, number[]>>;
      runs: Partial<Record<Kind, number[]>>;
      runBare: Partial<Record<Kind, number[]>>;
      /** What each kind got unmeasured before its pairs: requests back to back, then pairs. */
      warmed: Partial<Record<Kind, { requests: number; pairs: number }>>;
    };
    const stats = (xs: number[]) => {
      const sorted = xs.map((x) => x * 1000).sort((a, b) => a - b);
      return { median: quantile(sorted, 0.5), p99: quantile(sorted, 0.99) };
    };
    const minus = (a: Stats, b: Stats) => ({ median: a.median - b.median, p99: a.p99 - b.p99 });
    /** A kind's figures, its bare spawns' (the other half of its pairs, or of its runs) and the difference. */
    const paired = (kind: Kind, inRuns = false) => {
      const own = (inRuns ? samples.runs : samples.kinds)[kind];
      const bare = (inRuns ? samples.runBare : samples.bare)[kind];
      if (!own || !bare) return undefined;
      const x = stats(own);
      const b = stats(bare);
      return { ...x, bare: b, overhead: minus(x, b) };
    };
    const serveStats = paired('http')!;
    const helper = paired('helper')!;
    const httpFloor = paired('floor')!;
    const peer = paired('peer');
    const serveInRuns = paired('http', true)!;
    const peerInRuns = paired('peer', true);
    const hostFloorStats = paired('hostFloor');
    const hostFloorInRuns = paired('hostFloor', true);
    const overhead = {
      requests,
      warmup,
      warmupRequests,
      warmed: samples.warmed,
      serve: serveStats,
      overhead: serveStats.overhead,
      helper,
      httpFloor,
      lighttpd: peer,
      hostFloor: hostFloorStats,
      // The same in runs of consecutive requests against runs of as many consecutive bare spawns.
      inRuns: { runLength, serve: serveInRuns, lighttpd: peerInRuns, hostFloor: hostFloorInRuns },
      // Where the median overhead goes: any Node HTTP front, and the rest; and what the Python
      // helper would add to a spawn, were `serve` using it.
      breakdown: {
        helper: helper.overhead.median,
        httpFront: httpFloor.median,
        runner: serveStats.overhead.median - httpFloor.median,
      },
    };
    report.overhead = overhead;
    const ms = (v: number) => v.toFixed(3).padStart(7);
    const row = (label: string, s: Stats & { bare: Stats; overhead?: Stats }, withOverhead = true) =>
      console.log(
        `  ${label.padEnd(34)} ${ms(s.median)} ${ms(s.p99)}   ${ms(s.bare.median)} ${ms(s.bare.p99)}` +
          (withOverhead ? `   ${ms(s.overhead!.median)} ${ms(s.overhead!.p99)}` : ''),
      );
    console.log(`overhead over ${requests} requests of each kind (after ${warmupRequests} unmeasured), each in alternation with a bare spawn of hello.sh (ms):`);
    console.log(`  ${''.padEnd(34)} ${'median'.padStart(7)} ${'p99'.padStart(7)}   ${'bare'.padStart(7)} ${'p99'.padStart(7)}   ${'minus'.padStart(7)} ${'p99'.padStart(7)}`);
    row('serve -> hello.sh', serveStats);
    if (peer) row('lighttpd mod_cgi -> hello.sh', peer);
    if (hostFloorStats) row('node:http + addon -> hello.sh', hostFloorStats);
    row('spawned through the Python helper', helper);
    row('node:http hello (no script)', httpFloor, false);
    console.log(`  runner overhead (serve minus bare): median ${serveStats.overhead.median.toFixed(3)}, p99 ${serveStats.overhead.p99.toFixed(3)}` + (peer ? `; lighttpd's: median ${peer.overhead.median.toFixed(3)}, p99 ${peer.overhead.p99.toFixed(3)}` : ''));
    const b = overhead.breakdown;
    console.log(`  of the median overhead: Node HTTP front ${b.httpFront.toFixed(3)}, the rest of the runner ${b.runner.toFixed(3)}`);
    console.log(`  (the Python helper, the fallback without the native addon, adds ${b.helper.toFixed(3)} to a spawn)`);
    console.log(`\nthe same in runs of ${runLength} consecutive requests, each followed by ${runLength} consecutive bare spawns (ms):`);
    row('serve -> hello.sh', serveInRuns);
    if (peerInRuns) row('lighttpd mod_cgi -> hello.sh', peerInRuns);
    if (hostFloorInRuns) row('node:http + addon -> hello.sh', hostFloorInRuns);

    if (!values['skip-throughput']) {
      // 2. Throughput against the peers, same script, rounds interleaved.
      targets.push(await startServeProcess('serve (CGI_RUNNER_SPAWNER=helper)', cgiDir, { CGI_RUNNER_SPAWNER: 'helper' }));
      targets.push(await startServeProcess('serve (CGI_RUNNER_SPAWNER=node)', cgiDir, { CGI_RUNNER_SPAWNER: 'node' }));
      if (lighttpd) targets.push(lighttpd);
      if (findPeer('apache2') && findPeer('mod_cgid')) targets.push(await startApacheCgid(cgiDir));
      if (hostFloor) targets.push(hostFloor);
      const results: Record<string, Record<string, number[]>> = {};
      // --pin: each server's tree on the server CPUs (the scripts it starts later inherit that), wrk on the other.
      let wrkCpus: string | undefined;
      if (values.pin) {
        const plan = planPinning();
        if (!plan.enabled) throw new Error(`cgi-measure: --pin: ${plan.reason}`);
        for (const target of targets) pinTree(target.pids(), plan.serverCpus);
        wrkCpus = plan.loadCpus;
        report.pinning = plan.reason;
        console.log(`\npinned: ${plan.reason}`);
      }
      for (const c of [1, 16]) {
        for (let round = 0; round < rounds; round++) {
          // Every other round in the reverse order, so that no target always follows the same one.
          for (const target of round % 2 === 0 ? targets : [...targets].reverse()) {
            const threads = Math.min(c, Math.max(1, os.availableParallelism()));
            // Unmeasured: a new connection (wrk opens its own) sends a Node server through a few
            // deoptimizations and recompilations first, and the other targets' runs have just
            // pushed this one out of the caches.
            if (warmup > 0) await runWrk(target.url, { threads, connections: c, seconds: warmup, cpus: wrkCpus });
            const sample = await runWrk(target.url, { threads, connections: c, seconds: duration, cpus: wrkCpus });
            if (sample.errors > 0) throw new Error(`cgi-measure: ${target.name} had ${sample.errors} errors at ${c} connections`);
            const rps = sample.rps;
            ((results[target.name] ??= {})[`c${c}`] ??= []).push(rps);
          }
        }
      }
      const table: Record<string, Record<string, number>> = {};
      console.log(`\nrequests/s for hello.sh (wrk, ${duration} s per run after ${warmup} s unmeasured, median of ${rounds} interleaved rounds, every other one in the reverse order):`);
      for (const [name, byC] of Object.entries(results)) {
        table[name] = Object.fromEntries(Object.entries(byC).map(([k, xs]) => [k, median(xs)]));
        console.log(`  ${name.padEnd(36)} 1 conn ${table[name].c1!.toFixed(0).padStart(6)}   16 conns ${table[name].c16!.toFixed(0).padStart(6)}   (runs: ${JSON.stringify(byC)})`);
      }
      // Round by round, since the machine's drift moves both of a pair within a round: serve against
      // lighttpd; the floor of a Node host against lighttpd (what one could reach) and serve against
      // the floor (what the runner's own work per request costs).
      const lighttpdRuns = lighttpd ? results[lighttpd.name] : undefined;
      const compare = (label: string, a: Record<string, number[]> | undefined, b: Record<string, number[]> | undefined) => {
        if (!a || !b) return undefined;
        const byConnections: Record<string, PairedComparison> = {};
        for (const c of ['c1', 'c16']) {
          const p = (byConnections[c] = pairedComparison(a[c] ?? [], b[c] ?? []));
          console.log(`  ${label} at ${c.slice(1)} conn${c === 'c1' ? '' : 's'}, round by round: median ${p.medianRatio.toFixed(2)}x, ahead in ${p.ahead} of ${p.rounds} rounds`);
        }
        return byConnections;
      };
      report.throughput = {
        duration,
        warmup,
        rounds,
        commands: ['wrk -t1 -c1 -dNs URL', `wrk -t${Math.min(16, os.availableParallelism())} -c16 -dNs URL`],
        results: table,
        runs: results,
        serveAgainstLighttpd: compare('serve / lighttpd', results[serve.name], lighttpdRuns),
        floorAgainstLighttpd: compare('the floor / lighttpd', results[floorName], lighttpdRuns),
        serveAgainstFloor: compare('serve / the floor', results[serve.name], results[floorName]),
      };
    }
    report.machine = { ...(report.machine as object), loadavgAfter: os.loadavg() };
    if (typeof values.json === 'string') fs.writeFileSync(values.json, JSON.stringify(report, null, 2) + '\n');
  } finally {
    for (const target of new Set([...targets, ...background])) await target.stop().catch(() => {});
    await scripts.cleanup();
  }
}

await main();
