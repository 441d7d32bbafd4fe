// The HTML report opened in a real headless browser (Debian's chromium): inline SVG charts render, nothing is fetched, and a screenshot is saved to look at.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { pathToFileURL } from 'node:url';
import { renderHtml } from '../src/bench/html.ts';
import type { BenchReport, BenchResult, Mode } from '../src/bench/report.ts';
import { requirePeer } from '../src/peers/availability.ts';

/** A report shaped like a real run on a 2-core machine: every target at 1, 8 and 32 connections. */
function sampleReport(): BenchReport {
  const targets: [string, Mode, number, number][] = [
    // name, mode, p50 at 1 connection (ms), requests/s at 1 connection
    ['node-http', 'http', 0.09, 9000],
    ['fcgi-serve', 'fastcgi', 0.25, 3500],
    ['fcgi-nginx-unix', 'fastcgi', 0.3, 3000],
    ['fcgi-nginx-tcp', 'fastcgi', 0.32, 2900],
    ['fcgi-nginx-close', 'fastcgi', 0.45, 2000],
    ['php-fpm-1', 'fastcgi', 0.28, 3300],
    ['php-fpm-n', 'fastcgi', 0.28, 3300],
    ['cgi-sh', 'cgi', 1.6, 600],
    ['fcgiwrap', 'cgi', 1.4, 650],
    ['apache-cgid', 'cgi', 1.9, 500],
    ['cgi-mjs', 'cgi', 38, 26],
    ['cgi-ts', 'cgi', 160, 6],
  ];
  const results: BenchResult[] = [];
  for (const c of [1, 8, 32]) {
    for (const [target, mode, p50, rps1] of targets) {
      const scale = mode === 'cgi' ? 1.6 : c === 1 ? 1 : 2.5;
      const rps = rps1 * (c === 1 ? 1 : scale);
      const median = c === 1 ? p50 : (c / rps) * 1000;
      results.push({
        target,
        mode,
        connections: c,
        requests: Math.round(rps * 4),
        errors: 0,
        rps,
        latencyMs: { p50: median, p90: median * 1.6, p99: median * 3, p999: median * 5, max: median * 8 },
        cpuMsPerRequest: mode === 'cgi' ? p50 * 0.9 : p50 * 0.6,
        peakRssMb: mode === 'cgi' ? 60 + c * 2 : 45,
      });
    }
  }
  return {
    machine: { platform: 'Linux', kernel: '6.1', cpuModel: 'Test CPU', cpus: 2, memoryMb: 4096, loadAverage: [0.1, 0.2, 0.3], node: 'v20.19.0', pinning: { enabled: true, description: 'load generator on CPU 1, servers on CPU 0', loadGenerator: '1', servers: '0' } },
    results,
    run: {
      command: 'cgi-runner bench --html report.html',
      startedAt: '2025-01-01T00:00:00.000Z',
      durationSeconds: 4,
      rounds: 3,
      warmupSeconds: 0.33,
      connections: [1, 8, 32],
      rate: null,
      baseline: 'node-http',
      targets: targets.map(([name, mode]) => ({ name, mode, description: `the ${name} target <with markup & quotes ">`, url: 'http://127.0.0.1:1/', cpus: '0' })),
      skipped: [{ target: 'lighttpd', reason: 'not installed' }],
      unsent: {},
      errorKinds: {},
      pids: [],
    },
  };
}

function chromium(bin: string, args: string[], profile: string): Promise<string> {
  const flags = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync', `--user-data-dir=${profile}`];
  return new Promise((resolve, reject) => {
    execFile(bin, [...flags, ...args], { timeout: 60_000, maxBuffer: 32 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`chromium failed: ${err.message}\n${stderr.slice(-2000)}`));
      else resolve(stdout);
    });
  });
}

test('the report is self-contained: inline SVG, escaped text, no external resource', () => {
  const html = renderHtml(sampleReport());
  assert.match(html, /^<!doctype html>/);
  assert.equal((html.match(/<svg /g) ?? []).length, 5, 'three latency charts, throughput, cost per request');
  assert.doesNotMatch(html, /<(script|link|img|iframe)\b/i);
  assert.doesNotMatch(html, /\b(src|href)=/i);
  assert.doesNotMatch(html, /url\(/i);
  assert.ok(html.includes('&lt;with markup &amp; quotes &quot;&gt;'), 'descriptions are escaped');
  assert.ok(!html.includes('<with markup'), 'no raw markup from data');
});

test('headless chromium renders the charts; screenshot saved', async (t) => {
  const bin = requirePeer(t, 'chromium');
  if (!bin) return;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-html-'));
  try {
    const html = renderHtml(sampleReport());
    const page = path.join(dir, 'report.html');
    fs.writeFileSync(page, html);
    // A copy with a probe that measures each rendered SVG and puts the sizes in the title.
    const probePage = path.join(dir, 'probe.html');
    const probe = `<script>document.title = JSON.stringify([...document.querySelectorAll('svg')].map((s) => { const b = s.getBoundingClientRect(); return [Math.round(b.width), Math.round(b.height), s.querySelectorAll('circle,rect,line,polyline,text').length]; }).concat([[document.documentElement.scrollWidth]]));</script>`;
    fs.writeFileSync(probePage, html.replace('</body>', `${probe}</body>`));
    const dom = await chromium(bin, ['--window-size=1200,1600', '--dump-dom', pathToFileURL(probePage).href], path.join(dir, 'profile1'));
    const title = /<title>(.*?)<\/title>/s.exec(dom)?.[1] ?? '';
    const sizes = JSON.parse(title.replaceAll('&quot;', '"')) as number[][];
    const pageWidth = sizes.pop()![0]!;
    assert.equal(sizes.length, 5);
    for (const [w, h, shapes] of sizes) {
      assert.ok(w! > 600 && h! > 150, `an SVG rendered at ${w}×${h}`);
      assert.ok(shapes! > 20, `an SVG with only ${shapes} shapes`);
    }
    assert.ok(pageWidth <= 1200, `the page is ${pageWidth}px wide: it scrolls sideways`);

    const shot = process.env.BENCH_SCREENSHOT ?? path.join(os.tmpdir(), 'cgi-runner-bench-report.png');
    await chromium(bin, [`--screenshot=${shot}`, '--window-size=1200,2600', '--hide-scrollbars', pathToFileURL(page).href], path.join(dir, 'profile2'));
    const png = fs.readFileSync(shot);
    assert.deepEqual([...png.subarray(1, 4)], [...Buffer.from('PNG')]);
    assert.equal(png.readUInt32BE(16), 1200, 'screenshot width');
    // A blank page compresses to a few kB; charts and text do not.
    assert.ok(png.length > 50_000, `screenshot is only ${png.length} bytes`);
    // The page next to its screenshot, to open in a browser when the picture looks wrong.
    fs.copyFileSync(page, shot.replace(/\.png$/, '') + '.html');
    t.diagnostic(`screenshot: ${shot}`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
