// Requests per second of the responder at 1, 2, ... workers, behind nginx with deploy/nginx (TCP, upstream
// keepalive), measured with wrk. Usage:
//   node --import tsx src/deploy/measure-workers.ts [--workers 1,2] [--duration 10] [--connections 64] [--path /tcp/hello]
import { spawn } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { findPeer, freePort } from '../peers/index.ts';
import { startDeployNginx, startFcgi } from './stack.ts';
import { deployDir } from './template.ts';

const { values } = parseArgs({
  options: {
    workers: { type: 'string', default: '1,2' },
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

const counts = values.workers!.split(',').map(Number);
const seconds = Number(values.duration);
const site = path.join(deployDir, 'site.ts');
process.stdout.write(
  `${os.cpus()[0]?.model ?? 'cpu'}, ${os.availableParallelism()} cores; nginx ${values['nginx-workers']} workers; ` +
    `wrk -t${values.threads} -c${values.connections} -d${seconds}s ${values.path}\n`,
);
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
    const r = await wrk(url, seconds);
    process.stdout.write(`--workers ${workers}: ${Math.round(r.rps)} requests/s, p99 ${r.p99}, errors: ${r.errors}\n`);
  } finally {
    await nginx.stop();
    await app.stop();
  }
}
