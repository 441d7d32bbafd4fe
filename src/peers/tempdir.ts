// Temporary directories for peer configs, sockets and logs, enterable by other users (www-data) and removed on cleanup or exit.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export interface TempDir {
  readonly path: string;
  /** Removes the directory and everything in it; safe to call twice. */
  cleanup(): Promise<void>;
}

const pending = new Set<string>();
let hookInstalled = false;

/**
 * mkdtemp creates mode 0700, which Apache children and php-fpm workers running as www-data
 * cannot enter to reach a socket or a script, so the directory is widened to 0755.
 * Set CGI_RUNNER_KEEP_TMP=1 to keep the directories for inspection after a failure.
 */
export async function makeTempDir(prefix = 'cgi-runner-'): Promise<TempDir> {
  const dir = await fs.promises.mkdtemp(path.join(os.tmpdir(), prefix));
  await fs.promises.chmod(dir, 0o755);
  pending.add(dir);
  if (!hookInstalled) {
    hookInstalled = true;
    process.on('exit', () => {
      if (keep()) return;
      for (const d of pending) fs.rmSync(d, { recursive: true, force: true });
    });
  }
  return {
    path: dir,
    async cleanup() {
      pending.delete(dir);
      if (!keep()) await fs.promises.rm(dir, { recursive: true, force: true, maxRetries: 3 });
    },
  };
}

function keep(): boolean {
  return Boolean(process.env.CGI_RUNNER_KEEP_TMP);
}

/** Creates a directory (and parents) with mode 0755 regardless of the umask. */
export async function mkdirShared(dir: string): Promise<string> {
  await fs.promises.mkdir(dir, { recursive: true });
  await fs.promises.chmod(dir, 0o755);
  return dir;
}

/** Writes a file, by default with mode 0644 regardless of the umask (0755 for scripts). */
export async function writeShared(file: string, content: string | Uint8Array, mode = 0o644): Promise<string> {
  await fs.promises.writeFile(file, content);
  await fs.promises.chmod(file, mode);
  return file;
}
