// The command line: `--help` on every command lists the flags the issues name, with their defaults.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { workerCount } from '../src/workers.ts';

const repoRoot = path.resolve(import.meta.dirname, '..');
const run = promisify(execFile);

// [command, flag as --help shows it, its default or null for none]
const expected: Record<string, [flag: string, defaultValue: string | null][]> = {
  serve: [
    ['--port PORT', '8080'],
    ['--host ADDRESS', '127.0.0.1'],
    ['--cgi-dir DIR', './cgi-bin'],
    ['--timeout SECONDS', '30'],
    ['--max-body BYTES', '1073741824'],
    ['--max-scripts N', null],
    ['--pass-auth', null],
    ['--follow-symlinks', null],
    ['--isindex-args', null],
    ['--fcgi-dir DIR', './fcgi'],
    ['--fcgi-procs N', '1'],
    ['--fcgi-pass PREFIX=ADDRESS', null],
    ['--fcgi-root DIR', null],
  ],
  fcgi: [
    ['--listen ADDRESS', null],
    ['--app FILE', null],
    ['--workers N', '1'],
    ['--socket-mode MODE', '0660'],
    ['--max-conns N', null],
    ['--max-reqs N', null],
    ['--cgi-dir DIR', null],
    ['--log-format FORMAT', 'combined'],
    ['--check ADDRESS', null],
  ],
  bench: [
    ['--duration SECONDS', null],
    ['--connections LIST', '1,8,32'],
    ['--targets LIST', null],
    ['--rate N', null],
    ['--json FILE', null],
    ['--html FILE', null],
  ],
};

for (const [command, flags] of Object.entries(expected)) {
  test(`cgi-runner ${command} --help`, async () => {
    const { stdout } = await run(process.execPath, ['--import', 'tsx', 'src/cli.ts', command, '--help'], { cwd: repoRoot });
    assert.match(stdout, new RegExp(`^usage: cgi-runner ${command} `));
    for (const [flag, defaultValue] of flags) {
      const line = stdout.split('\n').find((l) => l.startsWith(`  ${flag} `));
      assert.ok(line, `${command} --help lists ${flag}:\n${stdout}`);
      if (defaultValue !== null) assert.ok(line.endsWith(`(default: ${defaultValue})`) || line.includes(`(default: ${defaultValue})`), `${flag} defaults to ${defaultValue}: ${line}`);
    }
  });
}

test('fcgi --workers: a count, or auto for one per core', () => {
  assert.equal(workerCount('3'), 3);
  assert.equal(workerCount('auto'), os.availableParallelism());
  for (const bad of ['0', '-1', '1.5', 'all', '']) assert.throws(() => workerCount(bad), /--workers must be an integer >= 1/);
});

// The scripts run as `npm run NAME --` share the commands' flag specs and generated --help.
const scripts: [file: string, script: string, flag: string, defaultValue: string][] = [
  ['src/http/cgi-measure.ts', 'bench:cgi', '--requests N', '2000'],
  ['src/bench/responder-compare.ts', 'bench:responder', '--connections N', '16'],
  ['src/soak/soak.ts', 'soak', '--minutes N', '10'],
  ['src/soak/faults.ts', 'faults', '--seconds N', '30'],
  ['src/fuzz/run.ts', 'fuzz', '--seconds N', '60'],
  ['src/deploy/measure-workers.ts', 'bench:workers', '--workers LIST', '1,2'],
];
for (const [file, script, flag, defaultValue] of scripts) {
  test(`npm run ${script} -- --help`, async () => {
    const { stdout } = await run(process.execPath, ['--import', 'tsx', file, '--help'], { cwd: repoRoot });
    assert.match(stdout, new RegExp(`^usage: npm run ${script} -- \\[flags\\]\n`));
    const line = stdout.split('\n').find((l) => l.startsWith(`  ${flag} `));
    assert.ok(line?.endsWith(`(default: ${defaultValue})`), `${flag}: ${line}\n${stdout}`);
  });
}
