// The app the deploy recipes serve: each fcgi/NAME.ts at /NAME, an index at /, and an Authorizer for
// Apache's mod_authnz_fcgi. A location prefix that the web server keeps in the path (/tcp/, /private/)
// is skipped: the first path segment that names an app picks it.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadApp, type App, type AppContext } from '../src/handler.ts';

const appDir = process.env.SITE_APP_DIR ?? path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'fcgi');
const names = fs
  .readdirSync(appDir)
  .filter((f) => /^[a-z0-9][a-z0-9-]*\.ts$/.test(f))
  .map((f) => f.slice(0, -3))
  .sort();
const apps = new Map<string, Promise<App>>();

function app(name: string): Promise<App> {
  let loaded = apps.get(name);
  if (!loaded) {
    loaded = loadApp(path.join(appDir, `${name}.ts`));
    apps.set(name, loaded);
  }
  return loaded;
}

const text = (body: string, status = 200, headers: Record<string, string> = {}) =>
  new Response(body, { status, headers: { 'content-type': 'text/plain; charset=utf-8', ...headers } });

/**
 * mod_authnz_fcgi calls this in the Authorizer role. As an authenticator (AuthBasicProvider) it gets
 * REMOTE_USER and REMOTE_PASSWD and answers 200 to accept. Without SITE_PASSWORD nobody gets in.
 */
function authorize(context: AppContext): Response {
  const { params } = context;
  const user = process.env.SITE_USER ?? 'demo';
  const password = process.env.SITE_PASSWORD;
  if (params.FCGI_APACHE_ROLE === 'AUTHORIZER') {
    return params.REMOTE_USER === user ? new Response(null, { status: 200 }) : text('not allowed\n', 403);
  }
  if (password && params.REMOTE_USER === user && params.REMOTE_PASSWD === password) {
    return new Response(null, { status: 200, headers: { 'Variable-SITE_USER': user } });
  }
  return text('bad user or password\n', 401);
}

export default {
  async fetch(request: Request, context: AppContext): Promise<Response> {
    if (context.role === 'authorizer') return authorize(context);
    const segments = new URL(request.url).pathname.split('/').filter(Boolean);
    const name = segments.slice(0, 2).find((s) => names.includes(s));
    if (name) return (await app(name)).fetch(request, context);
    if (segments.length <= 1) {
      const user = context.params.SITE_USER ? `signed in as ${context.params.SITE_USER}\n` : '';
      return text(`cgi-runner: ${names.map((n) => `/${n}`).join(' ')}\n${user}`);
    }
    return text('not found\n', 404);
  },
};
