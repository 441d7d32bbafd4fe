// The self-contained HTML report: inline SVG charts (latency percentiles on a log scale, requests/s by connection count, CPU per request) and the table.
import { formatMs, formatRate, headline, baselineFor, type BenchReport, type BenchResult, type Mode } from './report.ts';

const MODE_COLOURS: Record<Mode, string[]> = {
  // Warm hues for a process per request, cool for persistent responders, green for the plain HTTP floor.
  cgi: ['#d9480f', '#e67700', '#c2255c', '#a61e4d', '#f08c00', '#862e9c'],
  fastcgi: ['#1864ab', '#1c7ed6', '#0b7285', '#5f3dc4', '#3b5bdb', '#15aabf', '#4263eb'],
  http: ['#2b8a3e', '#5c940d'],
};

const MODE_LABELS: Record<Mode, string> = { cgi: 'CGI (a process per request)', fastcgi: 'FastCGI (a persistent responder)', http: 'plain HTTP (no gateway)' };

export function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

/** A stable colour per target: its mode's hue family, in order of first appearance. */
export function colourMap(results: readonly BenchResult[]): Map<string, string> {
  const map = new Map<string, string>();
  const used: Record<Mode, number> = { cgi: 0, fastcgi: 0, http: 0 };
  for (const r of results) {
    if (map.has(r.target)) continue;
    const palette = MODE_COLOURS[r.mode];
    map.set(r.target, palette[used[r.mode]++ % palette.length]!);
  }
  return map;
}

interface LogScale {
  lo: number;
  hi: number;
  at(v: number): number;
}

/** A log10 scale over whole decades covering every value, mapped onto [from, to] pixels. */
export function logScale(values: readonly number[], from: number, to: number): LogScale {
  const positive = values.filter((v) => v > 0 && Number.isFinite(v));
  const min = positive.length ? Math.min(...positive) : 1;
  const max = positive.length ? Math.max(...positive) : 10;
  const lo = 10 ** Math.floor(Math.log10(min));
  let hi = 10 ** Math.ceil(Math.log10(max));
  if (hi <= lo) hi = lo * 10;
  const span = Math.log10(hi) - Math.log10(lo);
  return {
    lo,
    hi,
    at: (v) => from + ((Math.log10(Math.max(v, lo)) - Math.log10(lo)) / span) * (to - from),
  };
}

function decades(scale: LogScale): number[] {
  const out: number[] = [];
  for (let v = scale.lo; v <= scale.hi * 1.0001; v *= 10) out.push(Number(v.toPrecision(1)));
  return out;
}

function shortMs(ms: number): string {
  if (ms < 0.001) return `${Math.round(ms * 1e6)} ns`;
  if (ms < 1) return `${Math.round(ms * 1000)} µs`;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  return `${Math.round(ms / 1000)} s`;
}

function shortCount(n: number): string {
  if (n >= 1e6) return `${n / 1e6}M`;
  if (n >= 1e3) return `${n / 1e3}k`;
  return String(n);
}

const text = (x: number, y: number, s: string, attrs = '') => `<text x="${x.toFixed(1)}" y="${y.toFixed(1)}" ${attrs}>${escapeHtml(s)}</text>`;

// The persistent responder behind the same front as each CGI target, so that the gap between the
// two medians is the process start and not a difference between fronts (serve against nginx).
const SAME_FRONT: Record<string, string> = {
  'cgi-sh': 'fcgi-serve',
  'cgi-mjs': 'fcgi-serve',
  'cgi-ts': 'fcgi-serve',
  fcgiwrap: 'fcgi-nginx-unix',
};

/** The persistent responder a CGI row is measured against: same front when measured, else the fastest FastCGI target. */
export function persistentReference(row: BenchResult, rows: readonly BenchResult[]): BenchResult | undefined {
  const same = rows.find((r) => r.target === SAME_FRONT[row.target]);
  if (same) return same;
  const fastcgi = rows.filter((r) => r.mode === 'fastcgi');
  return fastcgi.length ? fastcgi.reduce((a, b) => (b.latencyMs.p50 < a.latencyMs.p50 ? b : a)) : undefined;
}

/**
 * One row per target, a log axis of latency, markers at p50, p90, p99, p99.9 and max. CGI rows
 * carry a dashed bracket from the persistent responder's median to their own, labelled with the
 * difference: that gap is what the process start costs.
 */
export function latencyChart(rows: readonly BenchResult[], colours: Map<string, string>, connections: number): string {
  const sorted = [...rows].sort((a, b) => a.latencyMs.p50 - b.latencyMs.p50);
  const width = 1100;
  const left = 190;
  const right = width - 150;
  const top = 44;
  const rowH = 34;
  const height = top + sorted.length * rowH + 40;
  const all = sorted.flatMap((r) => [r.latencyMs.p50, r.latencyMs.max]);
  const x = logScale(all, left, right);
  const parts: string[] = [];
  parts.push(text(left, 20, `Latency by percentile at ${connections} connection${connections === 1 ? '' : 's'} (log scale)`, 'class="title"'));
  // Decade gridlines, with lighter lines at 2–9× each decade.
  for (const d of decades(x)) {
    const px = x.at(d);
    parts.push(`<line x1="${px}" x2="${px}" y1="${top - 8}" y2="${height - 30}" class="grid"/>`);
    parts.push(text(px, height - 14, shortMs(d), 'class="axis" text-anchor="middle"'));
    if (d < x.hi) for (let m = 2; m < 10; m++) parts.push(`<line x1="${x.at(d * m)}" x2="${x.at(d * m)}" y1="${top - 8}" y2="${height - 30}" class="minor"/>`);
  }
  sorted.forEach((r, i) => {
    const y = top + i * rowH + rowH / 2;
    const c = colours.get(r.target) ?? '#333';
    const l = r.latencyMs;
    if (i % 2 === 0) parts.push(`<rect x="0" y="${y - rowH / 2}" width="${width}" height="${rowH}" class="band"/>`);
    parts.push(`<rect x="8" y="${y - 6}" width="12" height="12" fill="${c}" rx="2"/>`);
    parts.push(text(26, y + 4, r.target, 'class="label"'));
    const reference = r.mode === 'cgi' ? persistentReference(r, sorted) : undefined;
    if (reference && l.p50 > reference.latencyMs.p50) {
      const from = x.at(reference.latencyMs.p50);
      const to = x.at(l.p50);
      parts.push(`<line x1="${from}" x2="${to}" y1="${y - 11}" y2="${y - 11}" class="bracket"/>`);
      parts.push(`<line x1="${from}" x2="${from}" y1="${y - 14}" y2="${y - 8}" class="bracket-end"/>`);
      // With one connection nothing queues, so the whole gap is the process start; with more it also holds queueing.
      const gap = `+${formatMs(l.p50 - reference.latencyMs.p50)} over ${reference.target}`;
      parts.push(text((from + to) / 2, y - 14, connections === 1 ? `process start: ${gap}` : gap, 'class="note" text-anchor="middle"'));
    }
    parts.push(`<line x1="${x.at(l.p50)}" x2="${x.at(l.max)}" y1="${y}" y2="${y}" stroke="${c}" stroke-width="2" opacity="0.6"/>`);
    parts.push(`<circle cx="${x.at(l.p90)}" cy="${y}" r="4" fill="${c}"/>`);
    parts.push(`<circle cx="${x.at(l.p99)}" cy="${y}" r="4.5" fill="#fff" stroke="${c}" stroke-width="2"/>`);
    parts.push(`<rect x="${x.at(l.p999) - 4}" y="${y - 4}" width="8" height="8" fill="#fff" stroke="${c}" stroke-width="2"/>`);
    parts.push(`<line x1="${x.at(l.max)}" x2="${x.at(l.max)}" y1="${y - 7}" y2="${y + 7}" stroke="${c}" stroke-width="2.5"/>`);
    parts.push(`<circle cx="${x.at(l.p50)}" cy="${y}" r="7" fill="${c}"><title>${escapeHtml(`${r.target}: p50 ${formatMs(l.p50)}, p90 ${formatMs(l.p90)}, p99 ${formatMs(l.p99)}, p99.9 ${formatMs(l.p999)}, max ${formatMs(l.max)}`)}</title></circle>`);
    parts.push(text(right + 16, y + 4, `p50 ${formatMs(l.p50)}`, 'class="value"'));
  });
  // Marker legend, top right: the same shapes as the rows, in grey.
  const ly = 16;
  const legend: [string, (x: number) => string][] = [
    ['p50', (lx) => `<circle cx="${lx}" cy="${ly}" r="6" fill="#555"/>`],
    ['p90', (lx) => `<circle cx="${lx}" cy="${ly}" r="4" fill="#555"/>`],
    ['p99', (lx) => `<circle cx="${lx}" cy="${ly}" r="4.5" fill="#fff" stroke="#555" stroke-width="2"/>`],
    ['p99.9', (lx) => `<rect x="${lx - 4}" y="${ly - 4}" width="8" height="8" fill="#fff" stroke="#555" stroke-width="2"/>`],
    ['max', (lx) => `<line x1="${lx}" x2="${lx}" y1="${ly - 7}" y2="${ly + 7}" stroke="#555" stroke-width="2.5"/>`],
  ];
  legend.forEach(([label, shape], i) => {
    const lx = right - 300 + i * 62;
    parts.push(shape(lx));
    parts.push(text(lx + 10, ly + 4, label, 'class="axis"'));
  });
  return svg(width, height, parts, `Latency percentiles by target at ${connections} connections`);
}

/** Requests/s against connection count, one line per target, on a log axis so CGI and FastCGI fit on one chart. */
export function throughputChart(results: readonly BenchResult[], colours: Map<string, string>): string {
  const width = 1100;
  const height = 440;
  const left = 80;
  const right = width - 210;
  const top = 40;
  const bottom = height - 50;
  const cs = [...new Set(results.map((r) => r.connections))].sort((a, b) => a - b);
  const xAt = (c: number) => (cs.length === 1 ? (left + right) / 2 : left + (cs.indexOf(c) / (cs.length - 1)) * (right - left));
  const yScale = logScale(results.map((r) => r.rps), bottom, top);
  const parts: string[] = [text(left, 22, 'Requests/s by connection count (log scale)', 'class="title"')];
  for (const d of decades(yScale)) {
    const py = yScale.at(d);
    parts.push(`<line x1="${left}" x2="${right}" y1="${py}" y2="${py}" class="grid"/>`);
    parts.push(text(left - 10, py + 4, shortCount(d), 'class="axis" text-anchor="end"'));
    if (d < yScale.hi) for (let m = 2; m < 10; m++) parts.push(`<line x1="${left}" x2="${right}" y1="${yScale.at(d * m)}" y2="${yScale.at(d * m)}" class="minor"/>`);
  }
  for (const c of cs) {
    parts.push(`<line x1="${xAt(c)}" x2="${xAt(c)}" y1="${top}" y2="${bottom}" class="minor"/>`);
    parts.push(text(xAt(c), bottom + 22, `${c} connection${c === 1 ? '' : 's'}`, 'class="axis" text-anchor="middle"'));
  }
  const targets = [...new Set(results.map((r) => r.target))];
  const labels: { y: number; target: string; value: number }[] = [];
  for (const t of targets) {
    const points = results.filter((r) => r.target === t).sort((a, b) => a.connections - b.connections);
    const c = colours.get(t) ?? '#333';
    const mode = points[0]!.mode;
    const dash = mode === 'cgi' ? ' stroke-dasharray="6 4"' : '';
    parts.push(`<polyline fill="none" stroke="${c}" stroke-width="2.5"${dash} points="${points.map((p) => `${xAt(p.connections).toFixed(1)},${yScale.at(p.rps).toFixed(1)}`).join(' ')}"/>`);
    for (const p of points) parts.push(`<circle cx="${xAt(p.connections)}" cy="${yScale.at(p.rps)}" r="4" fill="${c}"><title>${escapeHtml(`${t} at ${p.connections}: ${formatRate(p.rps)} req/s`)}</title></circle>`);
    const last = points.at(-1)!;
    labels.push({ y: yScale.at(last.rps), target: t, value: last.rps });
  }
  // End labels, pushed apart so that targets with similar rates stay readable.
  labels.sort((a, b) => a.y - b.y);
  const gap = 14;
  for (let i = 1; i < labels.length; i++) if (labels[i]!.y - labels[i - 1]!.y < gap) labels[i]!.y = labels[i - 1]!.y + gap;
  const overflow = labels.length ? labels.at(-1)!.y - (height - 8) : 0;
  if (overflow > 0) for (const l of labels) l.y -= overflow;
  for (const l of labels) parts.push(text(right + 12, l.y + 4, `${l.target} ${formatRate(l.value)}`, `class="label-small" fill="${colours.get(l.target)}"`));
  return svg(width, height, parts, 'Requests per second by connection count');
}

/** Server CPU per request (log) and peak RSS of the serving processes, one bar pair per target. */
export function resourceChart(rows: readonly BenchResult[], colours: Map<string, string>, connections: number): string {
  const sorted = [...rows].sort((a, b) => a.cpuMsPerRequest - b.cpuMsPerRequest);
  const width = 1100;
  const left = 190;
  const mid = 640;
  const top = 50;
  const rowH = 26;
  const height = top + sorted.length * rowH + 36;
  const x = logScale(sorted.map((r) => r.cpuMsPerRequest), left, mid - 90);
  const maxRss = Math.max(1, ...sorted.map((r) => r.peakRssMb));
  const rssAt = (mb: number) => ((width - 110 - (mid + 10)) * mb) / maxRss;
  const parts: string[] = [
    text(left, 22, `Server CPU per request (log scale) and peak RSS of the serving processes, at ${connections} connection${connections === 1 ? '' : 's'}`, 'class="title"'),
  ];
  for (const d of decades(x)) {
    parts.push(`<line x1="${x.at(d)}" x2="${x.at(d)}" y1="${top - 8}" y2="${height - 28}" class="grid"/>`);
    parts.push(text(x.at(d), height - 12, shortMs(d), 'class="axis" text-anchor="middle"'));
  }
  parts.push(text(mid + 10, top - 14, 'peak RSS', 'class="axis"'));
  sorted.forEach((r, i) => {
    const y = top + i * rowH;
    const c = colours.get(r.target) ?? '#333';
    parts.push(text(26, y + 15, r.target, 'class="label"'));
    parts.push(`<rect x="8" y="${y + 5}" width="12" height="12" fill="${c}" rx="2"/>`);
    parts.push(`<rect x="${left}" y="${y + 4}" width="${Math.max(1, x.at(r.cpuMsPerRequest) - left)}" height="16" fill="${c}" opacity="0.85"/>`);
    parts.push(text(x.at(r.cpuMsPerRequest) + 6, y + 16, formatMs(r.cpuMsPerRequest), 'class="value"'));
    parts.push(`<rect x="${mid + 10}" y="${y + 4}" width="${Math.max(1, rssAt(r.peakRssMb))}" height="16" fill="${c}" opacity="0.45"/>`);
    parts.push(text(mid + 16 + rssAt(r.peakRssMb), y + 16, `${r.peakRssMb.toFixed(1)} MB`, 'class="value"'));
  });
  return svg(width, height, parts, 'Server CPU per request and peak RSS');
}

function svg(width: number, height: number, parts: string[], label: string): string {
  return `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${width} ${height}" width="${width}" height="${height}" role="img" aria-label="${escapeHtml(label)}">\n${parts.join('\n')}\n</svg>`;
}

function resultsTable(report: BenchReport): string {
  const baseline = report.run.baseline;
  const rows = report.results.map((r) => {
    const base = baselineFor(report.results, baseline, r.connections);
    const ratio = base ? `${(r.latencyMs.p50 / base.latencyMs.p50).toFixed(r.latencyMs.p50 / base.latencyMs.p50 >= 10 ? 0 : 2)}×` : '-';
    return `<tr class="${r.mode}"><td>${escapeHtml(r.target)}</td><td>${r.mode}</td><td>${r.connections}</td><td>${formatRate(r.rps)}</td><td>${formatMs(r.latencyMs.p50)}</td><td>${formatMs(r.latencyMs.p90)}</td><td>${formatMs(r.latencyMs.p99)}</td><td>${formatMs(r.latencyMs.p999)}</td><td>${formatMs(r.latencyMs.max)}</td><td>${ratio}</td><td>${r.errors}</td><td>${formatMs(r.cpuMsPerRequest)}</td><td>${r.peakRssMb.toFixed(1)} MB</td></tr>`;
  });
  return `<table><thead><tr><th>target</th><th>mode</th><th>conns</th><th>req/s</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th><th>p50 vs ${escapeHtml(baseline ?? 'base')}</th><th>errors</th><th>CPU/req</th><th>peak RSS</th></tr></thead><tbody>${rows.join('')}</tbody></table>`;
}

const STYLE = `
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #212529; margin: 24px auto; max-width: 1140px; padding: 0 16px; }
h1 { font-size: 26px; margin: 0 0 4px; } h2 { font-size: 19px; margin: 32px 0 8px; }
.meta { color: #555; font-size: 13px; } code { background: #f1f3f5; padding: 1px 4px; border-radius: 3px; }
.headline { background: #f8f9fa; border-left: 4px solid #1c7ed6; padding: 10px 16px; font-size: 16px; }
.legend span { display: inline-block; margin-right: 18px; } .legend i { display: inline-block; width: 12px; height: 12px; border-radius: 2px; margin-right: 6px; vertical-align: -1px; }
svg { display: block; max-width: 100%; height: auto; margin: 8px 0; }
svg .title { font-size: 15px; font-weight: 600; fill: #212529; } svg .axis { font-size: 12px; fill: #666; }
svg .label { font-size: 13px; fill: #212529; } svg .label-small { font-size: 12px; } svg .value { font-size: 12px; fill: #333; }
svg .note { font-size: 11px; fill: #c92a2a; } svg .grid { stroke: #ced4da; stroke-width: 1; } svg .minor { stroke: #f1f3f5; stroke-width: 1; }
svg .band { fill: #f8f9fa; } svg .bracket { stroke: #c92a2a; stroke-width: 1.2; stroke-dasharray: 3 3; } svg .bracket-end { stroke: #c92a2a; stroke-width: 1.2; }
svg text { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
table { border-collapse: collapse; font-size: 13px; width: 100%; } th, td { padding: 4px 8px; border-bottom: 1px solid #e9ecef; text-align: right; }
th:first-child, td:first-child, th:nth-child(2), td:nth-child(2) { text-align: left; } tr.cgi td:first-child { color: #d9480f; } tr.fastcgi td:first-child { color: #1864ab; } tr.http td:first-child { color: #2b8a3e; }
ul { padding-left: 20px; }
`;

/** The whole page. Everything is inline, so the file works offline and can be attached anywhere. */
export function renderHtml(report: BenchReport): string {
  const { machine, run, results } = report;
  const colours = colourMap(results);
  const cs = [...new Set(results.map((r) => r.connections))].sort((a, b) => a - b);
  const modes = [...new Set(results.map((r) => r.mode))];
  const legend = `<p class="legend">${modes.map((m) => `<span><i style="background:${MODE_COLOURS[m][0]}"></i>${MODE_LABELS[m]}</span>`).join('')}</p>`;
  const latencyCharts = cs.map((c) => latencyChart(results.filter((r) => r.connections === c), colours, c)).join('\n');
  const high = cs.at(-1);
  const lines = headline(results, run.rate);
  const loop = run.rate ? `open loop at ${run.rate} requests/s (latency measured from each request's intended send time, so queueing shows)` : 'closed loop (each connection sends its next request when the previous answer arrives)';
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>cgi-runner benchmark: CGI against FastCGI</title>
<style>${STYLE}</style></head>
<body>
<h1>CGI against FastCGI: latency benchmark</h1>
<p class="meta">${escapeHtml(run.startedAt)} · <code>${escapeHtml(run.command)}</code><br>
${escapeHtml(`${machine.cpus} × ${machine.cpuModel}, ${Math.round(machine.memoryMb / 1024)} GiB, ${machine.platform} ${machine.kernel}, Node ${machine.node}, load average ${machine.loadAverage.join(' ')} at the start`)}<br>
${escapeHtml(machine.pinning.description)}</p>
${lines.length ? `<div class="headline">${lines.map((l) => `<p>${escapeHtml(l)}</p>`).join('')}</div>` : ''}
<h2 id="latency">Latency</h2>
${legend}
<p>Each row is a target; the big dot is the median, the bar on the right is the slowest request. The scale is logarithmic: each gridline is ten times the one before. The dashed red brackets go from the median of a persistent responder behind the same front (serve for serve's CGI, nginx for fcgiwrap) to the median of the CGI target: at one connection, where nothing queues, that gap is what starting a process for every request costs.</p>
${latencyCharts}
<h2 id="throughput">Throughput</h2>
<p>Dashed lines are CGI targets. A persistent responder gains from more connections until the server's core is busy; a process per request is bound by process start.</p>
${results.length ? throughputChart(results, colours) : ''}
<h2 id="cost">Cost per request</h2>
${high !== undefined ? resourceChart(results.filter((r) => r.connections === high), colours, high) : ''}
<h2 id="results">All results</h2>
${resultsTable(report)}
<h2 id="method">How this was measured</h2>
<ul>
<li>${escapeHtml(`${run.rounds} round${run.rounds === 1 ? '' : 's'} of ${(run.durationSeconds / run.rounds).toFixed(1)} s per target and connection count, targets in alternation (A B A B), each step after a ${run.warmupSeconds} s warm-up; the figures are the medians of the rounds (max is the max of all rounds).`)}</li>
<li>${escapeHtml(`Load: ${loop}. Latencies are kept in an HDR histogram at nanosecond resolution with 3 significant figures.`)}</li>
<li>${escapeHtml(`CPU per request: utime+stime of the serving processes and of their reaped children (from /proc), divided by the requests answered. Peak RSS: the largest sum of RSS over the serving process tree in samples every 100 ms.`)}</li>
<li>${escapeHtml(`What ran where: ${machine.pinning.description}.`)}</li>
${run.targets.map((t) => `<li><b>${escapeHtml(t.name)}</b> (${t.mode}): ${escapeHtml(t.description)} <span class="meta">${escapeHtml(t.url)}, CPUs ${escapeHtml(t.cpus)}</span></li>`).join('\n')}
${run.skipped.map((s) => `<li>skipped <b>${escapeHtml(s.target)}</b>: ${escapeHtml(s.reason)}</li>`).join('\n')}
</ul>
</body></html>
`;
}
