// `npm run bench:responder`: one responder process behind nginx against one php-fpm worker and against the same app on plain node:http, in the same run.
//
// Each target is measured with wrk at 16 connections through the same nginx, in alternating rounds
// (A B C A B C …); the median round is reported, and the ratios against the baselines are the
// headline, since absolute numbers depend on the machine.
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { intFlag, numberFlag, parseScriptArgs } from '../command.ts';
import { median } from './histogram.ts';
import { runWrk, type WrkSample as Sample } from './wrk.ts';
import { freePort, startNginx, startPhpFpm, startProcess, stop, stopAll, waitForPort, type ManagedProcess } from '../peers/index.ts';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const values = parseScriptArgs({
  script: 'bench:responder',
  summary:
    'One responder process behind nginx against one php-fpm worker and against the same app on plain node:http behind the same nginx,\n' +
    'wrk in alternating rounds; prints the medians and the ratios.',
  flags: {
    duration: { type: 'string', valueName: 'SECONDS', default: '5', description: 'length of each wrk run' },
    rounds: { type: 'string', valueName: 'N', default: '3', description: 'alternating rounds' },
    connections: { type: 'string', valueName: 'N', default: '16', description: 'wrk connections' },
    'access-log': { type: 'boolean', description: "turn on the responder's access log" },
  },
});
const duration = numberFlag(values, 'duration');
const rounds = intFlag(values, 'rounds', 1);
const connections = intFlag(values, 'connections', 1);


async function main(): Promise<void> {
  const procs: ManagedProcess[] = [];
  const fcgiPort = await freePort();
  const nodePort = await freePort();
  const node = process.execPath;
  const responderArgs = ['--import', 'tsx', 'src/cli.ts', 'fcgi', '--listen', `127.0.0.1:${fcgiPort}`, '--app', 'fcgi/hello.ts'];
  if (!values['access-log']) responderArgs.push('--no-access-log');
  // Their stdout (the responder's access log with --access-log) goes to /dev/null, not through a pipe
  // into this process, which shares the cores with wrk and nginx.
  procs.push(await startProcess({ name: 'responder', command: node, args: responderArgs, cwd: repoRoot, stdout: 'ignore', maxOutputBytes: 4096 }));
  procs.push(await startProcess({ name: 'node-http', command: node, args: ['--import', 'tsx', 'src/bench/http-app.ts', '--app', 'fcgi/hello.ts', '--port', String(nodePort)], cwd: repoRoot, stdout: 'ignore' }));
  await waitForPort(fcgiPort, '127.0.0.1', 20_000);
  await waitForPort(nodePort, '127.0.0.1', 20_000);
  const assets = path.join(repoRoot, 'src/bench/assets');
  const fpm = await startPhpFpm({ listen: 'tcp', children: 1, docroot: assets });
  const hello = path.join(assets, 'hello.php');
  const nginx = await startNginx({
    http: `
      access_log off;
      upstream responder { server 127.0.0.1:${fcgiPort}; keepalive 32; }
      upstream nodehttp { server 127.0.0.1:${nodePort}; keepalive 32; }
      server {
        listen 127.0.0.1:{{port}};
        location /responder { include /etc/nginx/fastcgi_params; fastcgi_keep_conn on; fastcgi_pass responder; }
        # Without keep_conn, where a single php-fpm worker does best: with it, the worker stays bound
        # to one idle pooled connection and the others wait.
        location /php-fpm { include /etc/nginx/fastcgi_params; fastcgi_param SCRIPT_FILENAME ${hello}; fastcgi_pass ${fpm.nginxAddress}; }
        location /node-http { proxy_http_version 1.1; proxy_set_header Connection ""; proxy_pass http://nodehttp; }
      }`,
  });
  const targets = ['responder', 'php-fpm', 'node-http'];
  const samples = new Map<string, Sample[]>(targets.map((t) => [t, []]));
  try {
    for (const t of targets) {
      const body = await (await fetch(`${nginx.url}/${t}`)).text();
      if (body !== 'hello\n') throw new Error(`bench: ${t} answered ${JSON.stringify(body)}`);
      await runWrk(`${nginx.url}/${t}`, { threads: 1, connections, seconds: 1 }); // warm-up: JIT, connection pools
    }
    for (let round = 1; round <= rounds; round++) {
      for (const t of targets) {
        const s = await runWrk(`${nginx.url}/${t}`, { threads: 1, connections, seconds: duration });
        samples.get(t)!.push(s);
        process.stderr.write(`round ${round}/${rounds} ${t}: ${s.rps.toFixed(0)} req/s, p99 ${s.p99Ms.toFixed(2)} ms\n`);
      }
    }
  } finally {
    await nginx.stop();
    await fpm.stop();
    for (const p of procs) await stop(p);
    await stopAll();
  }
  const summary = targets.map((t) => {
    const xs = samples.get(t)!;
    return { target: t, rps: median(xs.map((x) => x.rps)), p50Ms: median(xs.map((x) => x.p50Ms)), p99Ms: median(xs.map((x) => x.p99Ms)), errors: xs.reduce((n, x) => n + x.errors, 0) };
  });
  const get = (t: string) => summary.find((s) => s.target === t)!;
  console.log(`\n${connections} connections through nginx, wrk -t1, ${rounds} alternating rounds of ${duration} s, medians (load average at the end: ${os.loadavg()[0]!.toFixed(2)})`);
  console.log('target'.padEnd(20) + 'req/s'.padStart(9) + 'p50 ms'.padStart(9) + 'p99 ms'.padStart(9) + 'errors'.padStart(8));
  for (const s of summary) console.log(s.target.padEnd(20) + s.rps.toFixed(0).padStart(9) + s.p50Ms.toFixed(2).padStart(9) + s.p99Ms.toFixed(2).padStart(9) + String(s.errors).padStart(8));
  console.log(`\nresponder / one php-fpm worker: ${(get('responder').rps / get('php-fpm').rps).toFixed(2)}x`);
  console.log(`responder / same app on node:http behind proxy_pass: ${(get('responder').rps / get('node-http').rps).toFixed(2)}x`);
}

await main();
