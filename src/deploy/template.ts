// The template step of the official nginx image (envsubst over /etc/nginx/templates/*.template), done
// the same way for the tests, so that one set of deploy/ files serves docker compose and the test suite.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository root and the deploy/ directory, whatever the working directory. */
export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const deployDir = path.join(repoRoot, 'deploy');

/** `${NAME}` placeholders: uppercase, as environment variables are (nginx's own variables are lowercase). */
const placeholder = /\$\{([A-Z_][A-Z0-9_]*)\}/g;

/** The placeholder names a template uses, in order of first use. */
export function templateVariables(text: string): string[] {
  return [...new Set([...text.matchAll(placeholder)].map((m) => m[1]!))];
}

/**
 * Replaces `${NAME}` and `$NAME` for each NAME in `vars`, as `envsubst '${NAME}...'` does in the nginx
 * image. Unlike envsubst, a `${NAME}` left without a value throws: a test must not run a config
 * with a hole in it.
 */
export function renderTemplate(text: string, vars: Readonly<Record<string, string>>, what = 'template'): string {
  const missing = templateVariables(text).filter((name) => vars[name] === undefined);
  if (missing.length) throw new Error(`${what}: no value for ${missing.map((n) => '${' + n + '}').join(', ')}`);
  let out = text.replace(placeholder, (_, name: string) => vars[name]!);
  for (const [name, value] of Object.entries(vars)) {
    out = out.replace(new RegExp(`\\$${name}(?![A-Za-z0-9_])`, 'g'), () => value);
  }
  return out;
}

/**
 * Renders every `*.template` of `templatesDir` into `outDir` without the suffix, as the nginx image's
 * 20-envsubst-on-templates.sh does. Returns the files written.
 */
export async function renderTemplateDir(templatesDir: string, outDir: string, vars: Readonly<Record<string, string>>): Promise<string[]> {
  await fs.promises.mkdir(outDir, { recursive: true });
  const written: string[] = [];
  for (const name of (await fs.promises.readdir(templatesDir)).sort()) {
    if (!name.endsWith('.template')) continue;
    const source = path.join(templatesDir, name);
    const target = path.join(outDir, name.slice(0, -'.template'.length));
    await fs.promises.writeFile(target, renderTemplate(await fs.promises.readFile(source, 'utf8'), vars, source));
    written.push(target);
  }
  return written;
}
