// Server-side CPU time over a process tree, including children that exited during the window, and peak RSS.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseCpuList } from '../src/bench/pinning.ts';
import { TreeSampler, procAvailable, readStat, survivors, treePids, treeRssBytes, type ProcStat } from '../src/bench/proc-stats.ts';

test('CPU of short-lived children is counted after they exit (cutime/cstime of the parent)', { skip: !procAvailable() && 'needs /proc' }, async () => {
  // A parent shell that starts busy children one after another, like a CGI host, then idles.
  const busy = 'i=0; while [ $i -lt 150000 ]; do i=$((i+1)); done';
  const parent = spawn('/bin/sh', ['-c', `sleep 0.2; for n in 1 2 3; do /bin/sh -c '${busy}'; done; echo done; sleep 30`], {
    stdio: ['ignore', 'pipe', 'ignore'],
    detached: true,
  });
  const finished = new Promise<void>((resolve) => parent.stdout!.on('data', () => resolve()));
  try {
    await sleep(100);
    const seen = new Map<number, number>();
    const sampler = new TreeSampler([parent.pid!], 50, seen);
    sampler.start();
    const began = Date.now();
    await finished;
    await sleep(100);
    assert.ok(treePids([parent.pid!]).length <= 2, 'only the parent and its final sleep are left');
    const usage = sampler.stop();
    const wall = Date.now() - began;
    assert.ok(usage.cpuMs >= 100, `expected the children's CPU time, got ${usage.cpuMs} ms`);
    assert.ok(usage.cpuMs <= wall + 50, `CPU ${usage.cpuMs} ms cannot exceed ${wall} ms of wall time on one thread`);
    assert.ok(usage.peakRssBytes > 100 * 1024, `peak RSS ${usage.peakRssBytes}`);
    assert.ok(seen.size >= 3, 'the sampler records the processes it saw');
    // Only the parent and its sleep are still alive.
    assert.ok(survivors(seen).includes(parent.pid!));
    assert.equal(readStat(parent.pid!)?.ppid, process.pid);
  } finally {
    // The whole group: the final sleep holds the stdout pipe open.
    process.kill(-parent.pid!, 'SIGKILL');
  }
});

test('taskset CPU lists', () => {
  assert.deepEqual(parseCpuList('0'), [0]);
  assert.deepEqual(parseCpuList('0-2,5'), [0, 1, 2, 5]);
});

test('the RSS of a tree counts a child that still shares its parent\'s memory once', () => {
  const proc = (pid: number, ppid: number, comm: string, vsizeBytes: number, rssBytes: number, state = 'S'): ProcStat => ({ pid, ppid, comm, vsizeBytes, rssBytes, state, selfTicks: 0, childTicks: 0, startTime: 0 });
  const runner = proc(10, 1, 'node', 1_200_000_000, 100_000_000);
  const cases: Array<[string, ProcStat[], number]> = [
    ['the runner alone', [runner], 100_000_000],
    // Between clone(CLONE_VM) and execve: the runner's name and exactly its virtual size.
    ['two children before their execve', [runner, proc(11, 10, 'node', 1_200_000_000, 100_000_000), proc(12, 10, 'node', 1_200_000_000, 100_000_000)], 100_000_000],
    ['a script after its execve', [runner, proc(11, 10, 'sh', 2_600_000, 1_500_000)], 101_500_000],
    // A Node CGI script is a node process of its own, with a virtual size of its own.
    ['a node script', [runner, proc(11, 10, 'node', 1_100_000_000, 40_000_000)], 140_000_000],
    ['a zombie', [runner, proc(11, 10, 'sh', 0, 0, 'Z')], 100_000_000],
  ];
  for (const [name, tree, bytes] of cases) assert.equal(treeRssBytes(tree), bytes, name);
});
