// bench:cgi end to end (src/http/cgi-measure.ts): a short overhead test against the real servers, its figures in the JSON, and every kind warmed as asked before it is measured.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { loadSpawnAddon } from '../src/cgi/native-spawner.ts';
import { findPeer } from '../src/peers/index.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const CI = process.env.CI === 'true';
const missing = !findPeer('lighttpd') ? 'lighttpd (apt-get install lighttpd)' : loadSpawnAddon() instanceof Error ? 'the native addon (npm install with a C compiler)' : undefined;

interface Figures {
  median: number;
  p99: number;
  bare: { median: number };
  overhead: { median: number };
}

test('bench:cgi --skip-throughput: every kind warmed as asked, then measured against bare spawns', { timeout: 180_000 }, async (t) => {
  if (missing && !CI) return t.skip(`needs ${missing}`);
  assert.equal(missing, undefined, `CI needs ${missing}`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-cgi-'));
  try {
    const json = path.join(dir, 'figures.json');
    const { stdout } = await promisify(execFile)(
      process.execPath,
      ['--import', 'tsx', 'src/http/cgi-measure.ts', '--requests', '20', '--warmup', '0', '--warmup-requests', '30', '--skip-throughput', '--json', json],
      { cwd: ROOT, timeout: 150_000 },
    );
    assert.match(stdout, /overhead over 20 requests of each kind \(after 30 unmeasured\), each in alternation with a bare spawn of hello\.sh/);
    const report = JSON.parse(fs.readFileSync(json, 'utf8')) as {
      overhead: {
        requests: number;
        warmupRequests: number;
        warmed: Record<string, { requests: number; pairs: number }>;
        serve: Figures;
        lighttpd: Figures;
        hostFloor: Figures;
        inRuns: { serve: Figures; lighttpd: Figures };
      };
    };
    const { overhead } = report;
    assert.equal(overhead.requests, 20);
    assert.equal(overhead.warmupRequests, 30);
    // serve, the Python helper, the node:http hello, lighttpd and the floor: 30 requests each, then at least 50 pairs.
    assert.deepEqual(Object.keys(overhead.warmed).sort(), ['floor', 'helper', 'hostFloor', 'http', 'peer']);
    for (const [kind, warmed] of Object.entries(overhead.warmed)) {
      assert.equal(warmed.requests, 30, kind);
      assert.ok(warmed.pairs >= 50, `${kind}: ${warmed.pairs} pairs`);
    }
    for (const [name, figures] of Object.entries({ serve: overhead.serve, lighttpd: overhead.lighttpd, floor: overhead.hostFloor, 'serve in runs': overhead.inRuns.serve })) {
      // A request that runs the script takes longer than nothing, and the difference is what is reported.
      assert.ok(figures.median > 0 && figures.bare.median > 0, `${name}: ${JSON.stringify(figures)}`);
      assert.ok(Math.abs(figures.overhead.median - (figures.median - figures.bare.median)) < 1e-9, name);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
