// Runs one fast-check property for a time budget and reports runs, seed and the shrunk counterexample, so a failure can be replayed and turned into a named regression test.
import fc from 'fast-check';

export interface FuzzOptions {
  /** Time budget of this target, in milliseconds. */
  timeMs: number;
  /** Replay a run: the seed a failure report printed. */
  seed?: number;
  /** Stop after this many runs even if time is left. */
  maxRuns?: number;
  /** With seed: replay exactly the shrunk counterexample a failure report printed. */
  path?: string;
  /** Only the properties whose name contains this. */
  only?: string;
  /** Called after each property with its result (for a progress line). */
  onResult?: (result: PropertyResult) => void;
}

export interface PropertyResult {
  target: string;
  property: string;
  runs: number;
  ms: number;
  seed: number;
  failed: boolean;
  /** fc.stringify of the shrunk counterexample, when the property failed. */
  counterexample?: string;
  error?: string;
  /** fast-check's replay path, with the seed: `fc.assert(prop, { seed, path, numRuns: batchRuns })`. */
  path?: string;
  /** numRuns of the batch that failed, needed with seed and path to replay it. */
  batchRuns?: number;
}

export type AnyProperty = fc.IProperty<any> | fc.IAsyncProperty<any>; // eslint-disable-line @typescript-eslint/no-explicit-any

/**
 * Checks `property` in batches of growing size until `timeMs` has passed (or maxRuns), shrinking a
 * failure. A run in progress is never interrupted: an abandoned asynchronous run would go on in the
 * background and disturb the next one. Never throws for a failed property.
 */
export async function checkFor(target: string, name: string, property: AnyProperty, options: FuzzOptions): Promise<PropertyResult> {
  const started = performance.now();
  const deadline = started + options.timeMs;
  const maxRuns = options.maxRuns ?? Number.MAX_SAFE_INTEGER;
  let runs = 0;
  let batch = 16;
  let seed = options.seed ?? Math.floor(Math.random() * 2 ** 31);
  const result: PropertyResult = { target, property: name, runs: 0, ms: 0, seed, failed: false };
  if (options.only && !name.includes(options.only)) return result;
  do {
    const numRuns = Math.min(batch, maxRuns - runs);
    const details = await fc.check(property as fc.IAsyncProperty<unknown>, { numRuns, seed, path: options.path });
    runs += details.numRuns;
    if (details.failed) {
      result.failed = true;
      result.seed = seed;
      const shown = details.counterexample ? fc.stringify(details.counterexample) : undefined;
      // Long byte arrays make unreadable reports: the seed and path replay the exact case anyway.
      result.counterexample = shown && shown.length > 2000 ? `${shown.slice(0, 2000)}… (${shown.length} characters)` : shown;
      const err = details.errorInstance as Error | undefined;
      result.error = err ? (err.stack ?? err.message) : 'property returned false';
      result.path = details.counterexamplePath ?? undefined;
      result.batchRuns = numRuns;
      break;
    }
    // Later batches run more cases, so that fast-check's size bias also reaches its larger values.
    batch = Math.min(batch * 2, 1024);
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
  } while (performance.now() < deadline && runs < maxRuns && !options.path);
  result.runs = runs;
  result.ms = Math.round(performance.now() - started);
  options.onResult?.(result);
  return result;
}

/**
 * Splits `bytes` at the given cut points (any numbers; taken modulo the length, sorted, deduplicated).
 * A cut at 0 gives an empty first chunk: a read of nothing must change nothing either.
 */
export function splitAt(bytes: Buffer, cuts: readonly number[]): Buffer[] {
  if (bytes.length === 0) return [bytes];
  const points = [...new Set(cuts.map((c) => Math.abs(c) % bytes.length))].sort((a, b) => a - b);
  const out: Buffer[] = [];
  let from = 0;
  for (const p of points) {
    out.push(bytes.subarray(from, p));
    from = p;
  }
  out.push(bytes.subarray(from));
  return out;
}
