// Requests per second of the responder at 1, 2, ... workers, behind nginx with deploy/nginx (TCP, upstream
// keepalive), measured with wrk. The worker counts alternate over several rounds, and the median is
// reported, so that a neighbour's load spike does not decide the comparison. Usage:
//   node --import tsx src/deploy/measure-workers.ts [--workers 1,2] [--rounds 3] [--duration 10] [--connections 64] [--path /tcp/hello]
import { spawn } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import fs from 'node:fs';
import { childPids, findPeer, freePort } from '../peers/index.ts';
import { startDeployNginx, startFcgi } from './stack.ts';
import { deployDir } from './template.ts';

const { values } = parseArgs({
  options: {
    workers: { type: 'string', default: '1,2' },
    rounds: { type: 'string', default: '3' },
    duration: { type: 'string', default: '10' },
    connections: { type: 'string', default: '64' },
    threads: { type: 'string', default: '2' },
    path: { type: 'string', default: '/tcp/hello' },
    'nginx-workers': { type: 'string', default: String(Math.min(2, os.availableParallelism())) },
  },
});

function wrk(url: string, seconds: number): Promise<{ rps: number; p99: string; errors: string }> {
  return new Promise((resolve, reject) => {
    const args = ['-t', values.threads!, '-c', values.connections!, '-d', `${seconds}s`, '--latency', url];
    const child = spawn(findPeer('wrk') ?? 'wrk', args, { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (c: Buffer) => (out += c));
    child.on('error', reject);
    child.on('close', (code) => {
      const rps = /Requests\/sec:\s+([\d.]+)/.exec(out);
      if (code !== 0 || !rps) return reject(new Error(`wrk failed (${code}):\n${out}`));
      resolve({
        rps: Number(rps[1]),
        p99: /99%\s+(\S+)/.exec(out)?.[1] ?? '?',
        errors: /Non-2xx or 3xx responses: \d+|Socket errors: .*/.exec(out)?.[0] ?? 'none',
      });
    });
  });
}

/** CPU seconds (user + system) used so far by pid and its direct children. */
function cpuSeconds(pid: number): number {
  const tick = 100; // USER_HZ on Linux
  let total = 0;
  for (const p of [pid, ...childPids(pid)]) {
    try {
      const stat = fs.readFileSync(`/proc/${p}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      total += (Number(fields[11]) + Number(fields[12])) / tick;
    } catch {
      // gone
    }
  }
  return total;
}

const counts = values.workers!.split(',').map(Number);
const seconds = Number(values.duration);
const site = path.join(deployDir, 'site.ts');
process.stdout.write(
  `${os.cpus()[0]?.model ?? 'cpu'}, ${os.availableParallelism()} cores; nginx ${values['nginx-workers']} workers; ` +
    `wrk -t${values.threads} -c${values.connections} -d${seconds}s ${values.path}\n`,
);
const results = new Map<number, number[]>(counts.map((n) => [n, []]));
for (let round = 1; round <= Number(values.rounds); round++) {
  for (const workers of counts) {
    const app = await startFcgi({ app: site, listen: 'tcp', args: ['--workers', String(workers), '--no-access-log'] });
    const port = await freePort();
    const nginx = await startDeployNginx({
      templates: [path.join(deployDir, 'nginx/templates/default.conf.template')],
      vars: { NGINX_PORT: `127.0.0.1:${port}`, APP_TCP: app.address, APP_SOCKET: '/nonexistent/app.sock' },
      workerProcesses: Number(values['nginx-workers']),
    });
    try {
      const url = `http://127.0.0.1:${port}${values.path}`;
      // Warm-up: every worker loads the app and JIT-compiles the hot path.
      await wrk(url, 3);
      const [appBefore, nginxBefore] = [cpuSeconds(app.pid), cpuSeconds(nginx.nginx.pid)];
      const r = await wrk(url, seconds);
      const appCores = (cpuSeconds(app.pid) - appBefore) / seconds;
      const nginxCores = (cpuSeconds(nginx.nginx.pid) - nginxBefore) / seconds;
      results.get(workers)!.push(r.rps);
      process.stdout.write(
        `round ${round}, --workers ${workers}: ${Math.round(r.rps)} requests/s, p99 ${r.p99}, errors: ${r.errors}; ` +
          `CPU: responder ${appCores.toFixed(2)} cores, nginx ${nginxCores.toFixed(2)}; load average ${os.loadavg()[0]!.toFixed(1)}\n`,
      );
    } finally {
      await nginx.stop();
      await app.stop();
    }
  }
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
for (const [workers, rps] of results) process.stdout.write(`--workers ${workers}: median ${Math.round(median(rps))} requests/s over ${rps.length} rounds\n`);
