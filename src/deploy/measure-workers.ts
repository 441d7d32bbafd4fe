// Requests per second of the responder at 1, 2, ... workers, behind nginx with deploy/nginx (TCP, upstream
// keepalive), measured with wrk. The worker counts alternate over several rounds, and the median is
// reported, so that a neighbour's load spike does not decide the comparison.
//   npm run bench:workers -- [--workers 1,2] [--rounds 3] [--duration 10] [--connections 64] [--path /tcp/hello]
import os from 'node:os';
import path from 'node:path';
import { median } from '../bench/histogram.ts';
import { clockTicksPerSecond, treeCpuTicks, treeOf } from '../bench/proc-stats.ts';
import { runWrk } from '../bench/wrk.ts';
import { intFlag, numberFlag, parseScriptArgs } from '../command.ts';
import { freePort } from '../peers/index.ts';
import { startDeployNginx, startFcgi } from './stack.ts';
import { deployDir } from './template.ts';

const values = parseScriptArgs({
  script: 'bench:workers',
  summary: 'Requests/s of `fcgi --workers N` behind nginx (deploy/nginx, TCP, upstream keepalive), for each N in alternating rounds; prints the medians.',
  flags: {
    workers: { type: 'string', valueName: 'LIST', default: '1,2', description: 'worker counts to compare' },
    rounds: { type: 'string', valueName: 'N', default: '3', description: 'alternating rounds' },
    duration: { type: 'string', valueName: 'SECONDS', default: '10', description: 'length of each wrk run' },
    connections: { type: 'string', valueName: 'N', default: '64', description: 'wrk connections' },
    threads: { type: 'string', valueName: 'N', default: '2', description: 'wrk threads' },
    path: { type: 'string', valueName: 'PATH', default: '/tcp/hello', description: 'the URL path to load' },
    'nginx-workers': { type: 'string', valueName: 'N', default: String(Math.min(2, os.availableParallelism())), description: 'nginx worker processes' },
  },
}) as Record<string, string>;

/** CPU seconds (user + system) used so far by a process tree. */
function cpuSeconds(pid: number): number {
  return treeCpuTicks(treeOf([pid])) / clockTicksPerSecond();
}

const counts = values.workers.split(',').map(Number);
const seconds = numberFlag(values, 'duration');
const rounds = intFlag(values, 'rounds', 1);
const threads = intFlag(values, 'threads', 1);
const connections = intFlag(values, 'connections', 1);
const nginxWorkers = intFlag(values, 'nginx-workers', 1);
const site = path.join(deployDir, 'site.ts');
process.stdout.write(
  `${os.cpus()[0]?.model ?? 'cpu'}, ${os.availableParallelism()} cores; nginx ${nginxWorkers} workers; ` +
    `wrk -t${threads} -c${connections} -d${seconds}s ${values.path}\n`,
);
const results = new Map<number, number[]>(counts.map((n) => [n, []]));
for (let round = 1; round <= rounds; round++) {
  for (const workers of counts) {
    const app = await startFcgi({ app: site, listen: 'tcp', args: ['--workers', String(workers), '--no-access-log'] });
    const port = await freePort();
    const nginx = await startDeployNginx({
      templates: [path.join(deployDir, 'nginx/templates/default.conf.template')],
      vars: { NGINX_PORT: `127.0.0.1:${port}`, APP_TCP: app.address, APP_SOCKET: '/nonexistent/app.sock' },
      workerProcesses: nginxWorkers,
    });
    try {
      const url = `http://127.0.0.1:${port}${values.path}`;
      // Warm-up: every worker loads the app and JIT-compiles the hot path.
      const wrk = (forSeconds: number) => runWrk(url, { threads, connections, seconds: forSeconds });
      await wrk(3);
      const [appBefore, nginxBefore] = [cpuSeconds(app.pid), cpuSeconds(nginx.nginx.pid)];
      const r = await wrk(seconds);
      const appCores = (cpuSeconds(app.pid) - appBefore) / seconds;
      const nginxCores = (cpuSeconds(nginx.nginx.pid) - nginxBefore) / seconds;
      results.get(workers)!.push(r.rps);
      process.stdout.write(
        `round ${round}, --workers ${workers}: ${Math.round(r.rps)} requests/s, p99 ${r.p99Ms.toFixed(2)} ms, errors: ${r.errors}; ` +
          `CPU: responder ${appCores.toFixed(2)} cores, nginx ${nginxCores.toFixed(2)}; load average ${os.loadavg()[0]!.toFixed(1)}\n`,
      );
    } finally {
      await nginx.stop();
      await app.stop();
    }
  }
}
for (const [workers, rps] of results) process.stdout.write(`--workers ${workers}: median ${Math.round(median(rps))} requests/s over ${rps.length} rounds\n`);
