// `npm run bench:codec`: records/s and MB/s of the FastCGI record codec alone, for decode and encode at 0 B, 1 KiB and 64 KiB of content.
import { RecordDecoder } from '../fastcgi/decoder.ts';
import { FCGI_MAX_CONTENT_LENGTH, FCGI_STDOUT } from '../fastcgi/protocol.ts';
import { encodeRecord } from '../fastcgi/record.ts';

const sizes: Array<[string, number]> = [
  ['0 B', 0],
  ['1 KiB', 1024],
  ['64 KiB', FCGI_MAX_CONTENT_LENGTH],
];
const durationMs = Number(process.env.CODEC_BENCH_MS ?? 1000);

/** Runs `step` (which handles `perStep` records of `size` bytes) repeatedly for the duration. */
function measure(perStep: number, size: number, step: () => void): { recordsPerSec: number; mbPerSec: number } {
  for (let i = 0; i < 50; i++) step(); // warm-up: let the JIT settle before the clock starts
  let records = 0;
  const start = process.hrtime.bigint();
  const end = start + BigInt(durationMs) * 1_000_000n;
  let now = start;
  while (now < end) {
    for (let i = 0; i < 20; i++) step();
    records += 20 * perStep;
    now = process.hrtime.bigint();
  }
  const seconds = Number(now - start) / 1e9;
  return { recordsPerSec: records / seconds, mbPerSec: (records * size) / seconds / 1e6 };
}

const rows: string[][] = [['content', 'decode records/s', 'decode MB/s', 'encode records/s', 'encode MB/s']];
for (const [label, size] of sizes) {
  const content = Buffer.alloc(size, 0x61);
  const record = encodeRecord(FCGI_STDOUT, 1, content);
  // Decode input: a 64 KiB-ish socket read holding as many whole records as fit (at least one).
  const perChunk = Math.max(1, Math.floor(65536 / record.length));
  const chunk = Buffer.concat(Array.from({ length: perChunk }, () => record));
  let sink = 0;
  const decoder = new RecordDecoder((_type, _id, c) => {
    sink += c.length;
  });
  const decode = measure(perChunk, size, () => decoder.push(chunk));
  const encode = measure(1, size, () => {
    sink += encodeRecord(FCGI_STDOUT, 1, content).length;
  });
  if (sink < 0) console.log(sink);
  const fmt = (n: number) => (n >= 1e6 ? `${(n / 1e6).toFixed(2)} M` : `${(n / 1e3).toFixed(1)} k`);
  rows.push([label, fmt(decode.recordsPerSec), size ? decode.mbPerSec.toFixed(0) : '-', fmt(encode.recordsPerSec), size ? encode.mbPerSec.toFixed(0) : '-']);
}
const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
for (const row of rows) console.log(row.map((cell, i) => (i === 0 ? cell.padEnd(widths[i]) : cell.padStart(widths[i]))).join('  '));
console.log(`(node ${process.version}, ${durationMs} ms per cell; decode input is whole records in 64 KiB reads, and content lying whole in a read is handed on as a view, not copied)`);
