// Collects a request body of unknown length (chunked) so its length can be given as CONTENT_LENGTH: in memory up to a threshold, then in a temporary file that is removed afterwards.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';

export interface SpooledBody {
  readonly length: number;
  /** The body from its start. Call once. */
  stream(): Readable;
  /** Removes the temporary file, if there is one. Safe to call more than once. */
  cleanup(): void;
}

/** too-large: over maxBytes; aborted: the client went away; storage: the file could not be written (disk full). */
export type SpoolResult = { ok: true; body: SpooledBody } | { ok: false; reason: 'too-large' | 'aborted' | 'storage'; error?: string; cleanup(): void };

let spoolDir: string | undefined;
let spoolBase: string | undefined;
let fileCounter = 0;

/** Where spooled bodies go (`serve --spool-dir`); default the system temporary directory. */
export function setSpoolBase(dir: string | undefined): void {
  spoolBase = dir;
  spoolDir = undefined;
}

/** A directory only this process can enter, removed when it exits. */
function spoolDirectory(): string {
  if (!spoolDir) {
    const dir = fs.mkdtempSync(path.join(spoolBase ?? os.tmpdir(), 'cgi-runner-body-'));
    spoolDir = dir;
    process.once('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
  }
  return spoolDir;
}

/**
 * Reads `source` to its end. More than `maxBytes` gives 'too-large' (the rest is left unread).
 * Past `memoryBytes` the body goes to a temporary file, so a large upload does not sit in memory.
 */
export function spoolBody(source: Readable, maxBytes: number, memoryBytes: number): Promise<SpoolResult> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let length = 0;
    let file: string | undefined;
    let out: fs.WriteStream | undefined;
    let settled = false;
    const removeFile = () => {
      if (file) fs.rm(file, { force: true }, () => {});
      file = undefined;
    };
    const finish = (result: SpoolResult) => {
      if (settled) return;
      settled = true;
      source.off('data', onData);
      source.off('end', onEnd);
      source.off('error', onError);
      source.off('close', onClose);
      resolve(result);
    };
    const fail = (reason: 'too-large' | 'aborted' | 'storage', error?: Error) => {
      out?.destroy();
      removeFile();
      finish({ ok: false, reason, error: error?.message, cleanup: removeFile });
    };
    const onData = (chunk: Buffer) => {
      length += chunk.length;
      if (length > maxBytes) {
        source.pause();
        return fail('too-large');
      }
      if (out) {
        if (!out.write(chunk)) {
          source.pause();
          out.once('drain', () => source.resume());
        }
        return;
      }
      chunks.push(chunk);
      if (length > memoryBytes) {
        try {
          file = path.join(spoolDirectory(), `${process.pid}-${++fileCounter}`);
        } catch (err) {
          source.pause();
          return fail('storage', err as Error);
        }
        out = fs.createWriteStream(file, { mode: 0o600 });
        // ENOSPC, EDQUOT, EIO: the body cannot be kept, which the client is told (507), not left waiting.
        out.on('error', (err) => {
          source.pause();
          fail('storage', err);
        });
        for (const c of chunks.splice(0)) out.write(c);
      }
    };
    const onEnd = () => {
      const done = (): void => {
        const name = file;
        const body: SpooledBody = {
          length,
          stream: () => (name ? fs.createReadStream(name) : Readable.from(chunks, { objectMode: false })),
          cleanup: removeFile,
        };
        finish({ ok: true, body });
      };
      if (out) out.end(done);
      else done();
    };
    const onError = () => fail('aborted');
    const onClose = () => {
      if (!source.readableEnded) fail('aborted');
    };
    source.on('data', onData);
    source.once('end', onEnd);
    source.once('error', onError);
    source.once('close', onClose);
  });
}
