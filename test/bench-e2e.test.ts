// The bench command end to end: a short run over every available target (JSON shape, no errors, HTML written), and clean-up after a normal end and after Ctrl-C.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { readStat, treeOf } from '../src/bench/proc-stats.ts';
import type { BenchReport } from '../src/bench/report.ts';
import { TARGETS } from '../src/bench/targets.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const CI = process.env.CI === 'true';

interface Finished {
  code: number | null;
  stdout: string;
  stderr: string;
}

function bench(args: string[]): { child: ChildProcess; finished: Promise<Finished>; stderr: () => string } {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'bench', ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (c) => (stdout += c));
  child.stderr!.on('data', (c) => (stderr += c));
  const finished = new Promise<Finished>((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr })));
  return { child, finished, stderr: () => stderr };
}

/** Ticks since boot now, the unit of a process's start time in /proc/PID/stat. */
function nowTicks(): number {
  return Math.floor(Number(fs.readFileSync('/proc/uptime', 'utf8').split(' ')[0]) * 100);
}

/** Pids that are alive and were started between two points in time: nothing may be left of the run. */
async function leftovers(pids: readonly number[], fromTicks: number, toTicks: number): Promise<number[]> {
  // Orphans killed with their parent can be zombies for a moment; wait a little for them to go.
  const deadline = Date.now() + 5000;
  for (;;) {
    const left = pids.filter((pid) => {
      const s = readStat(pid);
      return s && s.state !== 'Z' && s.state !== 'X' && s.startTime >= fromTicks && s.startTime <= toTicks;
    });
    if (!left.length || Date.now() > deadline) return left;
    await sleep(100);
  }
}

function describeLeft(pids: number[]): string {
  return pids.map((pid) => `${pid} ${fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ').trim()}`).join('; ');
}

const RESULT_KEYS = ['connections', 'cpuMsPerRequest', 'errors', 'latencyMs', 'mode', 'peakRssMb', 'requests', 'rps', 'target'];

test('a short run over every available target: JSON shape, no errors, HTML, nothing left running', { timeout: 240_000, skip: process.platform !== 'linux' && 'Linux only' }, async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-e2e-'));
  try {
    const json = path.join(dir, 'bench.json');
    const html = path.join(dir, 'bench.html');
    const from = nowTicks();
    const run = bench(['--duration', '1', '--connections', '1,4', '--json', json, '--html', html]);
    const { code, stdout, stderr } = await run.finished;
    const to = nowTicks();
    assert.equal(code, 0, `bench exited ${code}\n${stderr.slice(-3000)}`);

    const report = JSON.parse(fs.readFileSync(json, 'utf8')) as BenchReport;
    assert.ok(report.machine && typeof report.machine === 'object', 'machine');
    assert.equal(typeof report.machine.cpus, 'number');
    assert.ok(Array.isArray(report.results) && report.results.length > 0, 'results');

    for (const s of report.run.skipped) {
      const message = `skipped ${s.target}: ${s.reason}`;
      // Under CI every target must run: a skipped one means a broken or incomplete setup.
      if (CI) assert.fail(message);
      t.diagnostic(message);
    }
    const ran = report.run.targets.map((x) => x.name);
    assert.deepEqual([...ran, ...report.run.skipped.map((s) => s.target)].sort(), TARGETS.map((x) => x.name).sort(), 'every target either ran or was skipped with a reason');

    for (const r of report.results) {
      const where = `${r.target} at ${r.connections}`;
      assert.deepEqual(Object.keys(r).sort(), RESULT_KEYS, `${where}: result keys`);
      assert.deepEqual(Object.keys(r.latencyMs).sort(), ['max', 'p50', 'p90', 'p99', 'p999'], `${where}: latency keys`);
      assert.ok(['cgi', 'fastcgi', 'http'].includes(r.mode), `${where}: mode ${r.mode}`);
      assert.equal(r.errors, 0, `${where}: ${r.errors} errors (${JSON.stringify(report.run.errorKinds)})`);
      assert.ok(Number.isInteger(r.requests) && r.requests > 0, `${where}: requests ${r.requests}`);
      assert.ok(r.rps > 0, `${where}: rps`);
      const l = r.latencyMs;
      assert.ok(l.p50 > 0 && l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max, `${where}: percentiles out of order ${JSON.stringify(l)}`);
      assert.ok(r.cpuMsPerRequest >= 0 && Number.isFinite(r.cpuMsPerRequest), `${where}: cpuMsPerRequest`);
      assert.ok(r.peakRssMb > 1, `${where}: peakRssMb ${r.peakRssMb}`);
    }
    for (const name of ran) {
      for (const c of [1, 4]) assert.ok(report.results.some((r) => r.target === name && r.connections === c), `${name} at ${c} connections has a result`);
    }

    assert.match(stdout, /p50/, 'the terminal table is printed');
    const page = fs.readFileSync(html, 'utf8');
    assert.ok((page.match(/<svg /g) ?? []).length >= 4, 'the HTML report has its charts');

    assert.ok(report.run.pids.length >= ran.length, 'the run lists the processes it started');
    const left = await leftovers(report.run.pids, from, to);
    assert.deepEqual(left, [], `left running: ${describeLeft(left)}`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('Ctrl-C stops the run and every process it started', { timeout: 90_000, skip: process.platform !== 'linux' && 'Linux only' }, async () => {
  // Targets that need nothing installed besides this checkout, plus nginx when there is one.
  const available = TARGETS.filter((x) => ['node-http', 'cgi-sh', 'fcgi-nginx-unix'].includes(x.name)).map((x) => x.name);
  const from = nowTicks();
  const run = bench(['--duration', '60', '--connections', '4', '--targets', available.join(',')]);
  const deadline = Date.now() + 60_000;
  while (!/targets? × /.test(run.stderr())) {
    assert.ok(Date.now() < deadline, `the run did not start measuring:\n${run.stderr()}`);
    assert.equal(run.child.exitCode, null, `bench exited early:\n${run.stderr()}`);
    await sleep(100);
  }
  await sleep(1000);
  // Everything below the bench process now: servers, their workers, CGI children in flight.
  const seen = new Map(treeOf([run.child.pid!]).filter((s) => s.pid !== run.child.pid).map((s) => [s.pid, s.startTime] as const));
  assert.ok(seen.size >= 2, `expected running servers under the bench, found ${seen.size}`);
  run.child.kill('SIGINT');
  const { code, stderr } = await run.finished;
  const to = nowTicks();
  assert.equal(code, 130, `exit code after SIGINT\n${stderr.slice(-2000)}`);
  const left = await leftovers([...seen.keys()], from, to);
  assert.deepEqual(left, [], `left running after Ctrl-C: ${describeLeft(left)}`);
});

test('--rate: open loop at the given arrival rate, and the report says what ran on which CPU', { timeout: 120_000, skip: process.platform !== 'linux' && 'Linux only' }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-rate-'));
  try {
    const json = path.join(dir, 'bench.json');
    const run = bench(['--duration', '1', '--connections', '4', '--targets', 'node-http', '--rate', '200', '--json', json]);
    const { code, stderr } = await run.finished;
    assert.equal(code, 0, stderr.slice(-3000));
    const report = JSON.parse(fs.readFileSync(json, 'utf8')) as BenchReport;
    assert.equal(report.run.rate, 200);
    const [result] = report.results;
    assert.equal(result?.target, 'node-http');
    // One second at 200 requests/s: about 200 requests, where a closed loop would make thousands.
    assert.ok(result.requests >= 120 && result.requests <= 260, `${result.requests} requests in 1 s at --rate 200`);
    assert.equal(result.errors, 0);
    const { pinning } = report.machine;
    if (pinning.enabled) {
      const load = pinning.loadGenerator.split(',');
      const servers = pinning.servers.split(',');
      assert.deepEqual(load.filter((cpu) => servers.includes(cpu)), [], `the load generator (${pinning.loadGenerator}) and the servers (${pinning.servers}) share no CPU`);
      assert.equal(report.run.targets.find((t) => t.name === 'node-http')?.cpus, pinning.servers, 'the target ran on the servers\' CPUs');
    } else {
      assert.ok(pinning.description.length > 0, 'says why nothing was pinned');
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
