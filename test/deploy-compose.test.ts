// docker-compose.yml and the Dockerfile, without a Docker engine: `docker-compose config` validates the
// file, and every config file it mounts must exist and be the one the integration tests run
// (deploy-nginx.test.ts, deploy-apache.test.ts), laid out the same way.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { before, describe, test } from 'node:test';
import { parseCommandArgs, type Command } from '../src/command.ts';
import { fcgiCommand } from '../src/commands/fcgi.ts';
import { deployDir, repoRoot, templateVariables } from '../src/deploy/template.ts';
import { serveNodeFlags } from '../src/node-flags.ts';
import { requirePeer } from '../src/peers/index.ts';

interface Service {
  image?: string;
  build?: { context: string };
  command?: string[];
  environment?: Record<string, string>;
  volumes?: string[];
  ports?: Array<{ published: number; target: number }>;
  depends_on?: Record<string, unknown>;
  deploy?: { replicas?: number };
  healthcheck?: { test: string[] };
  stop_grace_period?: string;
  init?: boolean;
}

interface Compose {
  services: Record<string, Service>;
  volumes?: Record<string, unknown>;
}

let compose: Compose | undefined;
let configStderr = '';

before(() => {
  if (!fs.existsSync('/usr/bin/docker-compose') && spawnSync('sh', ['-c', 'command -v docker-compose']).status !== 0) return;
  // A clean environment: COMPOSE_FILE or a .env elsewhere must not change what is validated.
  const env = { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: process.env.HOME ?? '/tmp' };
  const r = spawnSync('docker-compose', ['-f', path.join(repoRoot, 'docker-compose.yml'), 'config'], { cwd: repoRoot, env, encoding: 'utf8' });
  assert.equal(r.status, 0, `docker-compose config failed:\n${r.stderr}`);
  configStderr = r.stderr;
  // PyYAML comes with docker-compose (it is written in Python); the normalized config is YAML.
  const json = spawnSync('python3', ['-c', 'import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)'], { input: r.stdout, encoding: 'utf8' });
  assert.equal(json.status, 0, json.stderr);
  compose = JSON.parse(json.stdout) as Compose;
});

function need(t: Parameters<typeof requirePeer>[0]): Compose | undefined {
  if (!requirePeer(t, 'docker-compose')) return undefined;
  return compose;
}

/** Bind mounts of a service as [source on this machine, target in the container]. */
function binds(service: Service): Array<[string, string]> {
  return (service.volumes ?? []).map((v) => v.split(':')).filter((p) => p[0]!.startsWith('/')).map((p) => [p[0]!, p[1]!]);
}

function named(service: Service): Array<[string, string]> {
  return (service.volumes ?? []).map((v) => v.split(':')).filter((p) => !p[0]!.startsWith('/')).map((p) => [p[0]!, p[1]!]);
}

function parse(command: Command, argv: readonly string[]) {
  return parseCommandArgs(command, [...argv]).values;
}

function flagOf(argv: readonly string[], flag: string): string | undefined {
  const i = argv.indexOf(flag);
  return i === -1 ? undefined : argv[i + 1];
}

/** The Dockerfile's instructions, continuation lines joined. */
function dockerfile(): Array<[string, string]> {
  const text = fs.readFileSync(path.join(repoRoot, 'Dockerfile'), 'utf8').replace(/\\\n/g, ' ');
  return text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'))
    .map((l) => {
      const m = /^(\w+)\s+(.*)$/.exec(l)!;
      return [m[1]!.toUpperCase(), m[2]!];
    });
}

/** Where a path inside the image (/app/...) comes from in the repository, through the COPY lines. */
function imageFile(inImage: string): string | undefined {
  const workdir = dockerfile().find(([k]) => k === 'WORKDIR')![1];
  for (const [k, args] of dockerfile()) {
    if (k !== 'COPY') continue;
    const parts = args.split(/\s+/);
    const dest = path.posix.resolve(workdir, parts[parts.length - 1]!);
    for (const src of parts.slice(0, -1)) {
      const target = parts.length === 2 && dest !== workdir ? dest : path.posix.join(dest, path.basename(src));
      if (inImage === target || inImage.startsWith(target + '/')) return path.join(repoRoot, src, path.posix.relative(target, inImage));
    }
  }
  return undefined;
}

describe('docker-compose.yml', () => {
  test('docker-compose config accepts it; the services are app, app-tcp, cgi-dir, nginx, httpd and cgi', (t) => {
    const c = need(t);
    if (!c) return;
    assert.equal(configStderr.trim(), '', 'no warnings');
    assert.deepEqual(Object.keys(c.services).sort(), ['app', 'app-tcp', 'cgi', 'cgi-dir', 'httpd', 'nginx']);
    assert.equal(c.services.nginx!.image, 'nginx:stable');
    assert.equal(c.services.httpd!.image, 'httpd:2.4');
    for (const name of ['app', 'app-tcp', 'cgi-dir', 'cgi']) {
      const s: Service = c.services[name]!;
      assert.equal(s.build?.context, repoRoot, `${name} is built from the Dockerfile`);
      assert.equal(s.init, true, `${name}: an init reaps the processes it starts`);
      assert.ok(parseInt(s.stop_grace_period ?? '10') > 30, `${name}: stop_grace_period exceeds --shutdown-timeout`);
    }
  });

  test('every mounted file exists', (t) => {
    const c = need(t);
    if (!c) return;
    for (const [name, service] of Object.entries(c.services)) {
      for (const [source] of binds(service)) assert.ok(fs.existsSync(source), `${name} mounts ${source}, which does not exist`);
    }
  });

  test('nginx mounts exactly the templates and fastcgi.conf that deploy-nginx.test.ts runs, with a value for every placeholder', (t) => {
    const c = need(t);
    if (!c) return;
    const nginx = c.services.nginx!;
    const mounts = new Map(binds(nginx).map(([s, d]) => [d, s]));
    // The image renders /etc/nginx/templates/*.template into conf.d; the tests render the same directory.
    assert.equal(mounts.get('/etc/nginx/templates'), path.join(deployDir, 'nginx/templates'));
    const templates = fs.readdirSync(path.join(deployDir, 'nginx/templates')).filter((f) => f.endsWith('.template'));
    assert.ok(templates.length >= 1);
    for (const file of templates) {
      const text = fs.readFileSync(path.join(deployDir, 'nginx/templates', file), 'utf8');
      for (const name of templateVariables(text)) assert.ok(nginx.environment?.[name] !== undefined, `${file} needs ${name} in the nginx environment`);
      // Includes are relative to /etc/nginx; in the tests, to a directory whose cgi-runner/ is deploy/nginx.
      for (const m of text.matchAll(/^\s*include\s+([^;\s]+);/gm)) {
        const include = m[1]!;
        if (include.startsWith('/')) continue;
        assert.ok(include.startsWith('cgi-runner/'), `${file}: include ${include} is outside cgi-runner/`);
        const tested = path.join(deployDir, 'nginx', include.slice('cgi-runner/'.length));
        assert.ok(fs.existsSync(tested), `${file}: ${include} is not in deploy/nginx`);
        assert.equal(mounts.get(path.posix.join('/etc/nginx', include)), tested, `${include} is mounted from ${tested}`);
      }
    }
    // NGINX_PORT and NGINX_CGI_PORT are ports that compose publishes.
    for (const name of ['NGINX_PORT', 'NGINX_CGI_PORT']) {
      assert.ok(nginx.ports?.some((p) => String(p.target) === nginx.environment![name]), `${name} is published`);
    }
  });

  test('httpd mounts deploy/apache where deploy-apache.test.ts puts it, and runs the same httpd.conf', (t) => {
    const c = need(t);
    if (!c) return;
    const httpd = c.services.httpd!;
    const mounts = new Map(binds(httpd).map(([s, d]) => [d, s]));
    assert.equal(mounts.get('/usr/local/apache2/conf/cgi-runner'), path.join(deployDir, 'apache'));
    // The tests run `apache2 -d SERVERROOT -f conf/cgi-runner/httpd.conf`, SERVERROOT/conf/cgi-runner being deploy/apache.
    assert.deepEqual(httpd.command, ['httpd-foreground', '-f', 'conf/cgi-runner/httpd.conf']);
    const main = fs.readFileSync(path.join(deployDir, 'apache/httpd.conf'), 'utf8');
    const files = [main];
    for (const m of main.matchAll(/^\s*Include(?:Optional)?\s+(\S+)/gm)) {
      const include = m[1]!;
      assert.ok(include.startsWith('conf/cgi-runner/'), `httpd.conf includes ${include}, which is not in deploy/apache`);
      const file = path.join(deployDir, 'apache', include.slice('conf/cgi-runner/'.length));
      assert.ok(fs.existsSync(file), `${file} exists`);
      files.push(fs.readFileSync(file, 'utf8'));
    }
    for (const text of files) {
      for (const line of text.split('\n').filter((l) => !l.trim().startsWith('#'))) {
        for (const name of templateVariables(line)) assert.ok(httpd.environment?.[name] !== undefined, `httpd needs ${name} in its environment`);
      }
    }
    for (const m of main.matchAll(/^\s*LoadModule\s+\S+\s+(\S+)/gm)) assert.match(m[1]!, /^modules\/mod_\w+\.so$/, 'modules relative to ServerRoot');
    assert.ok(httpd.ports?.some((p) => String(p.target) === httpd.environment!.HTTPD_PORT), 'HTTPD_PORT is published');
  });

  test('nginx and httpd reach app and cgi-dir on the shared socket volume, and app-tcp (with replicas) on TCP', (t) => {
    const c = need(t);
    if (!c) return;
    const { app, nginx, httpd } = c.services;
    const appTcp = c.services['app-tcp']!;
    const cgiDir = c.services['cgi-dir']!;
    const cgiSocket = flagOf(cgiDir.command!, '--listen')!;
    const cgiRoot = path.posix.dirname(flagOf(cgiDir.command!, '--cgi-dir')!);
    assert.equal(flagOf(cgiDir.command!, '--socket-mode'), '0666');
    const socket = flagOf(app!.command!, '--listen')!;
    assert.ok(socket.startsWith('/'), 'app listens on a unix socket');
    assert.equal(flagOf(app!.command!, '--socket-mode'), '0666', 'the web servers run as other users');
    const socketDir = path.posix.dirname(socket);
    const volume = named(app!).find(([, d]) => d === socketDir)?.[0];
    assert.ok(volume && c.volumes && volume in c.volumes, 'the socket directory is a named volume');
    const port = flagOf(appTcp.command!, '--listen')!.split(':').pop();
    assert.ok((appTcp.deploy?.replicas ?? 1) >= 2, 'app-tcp runs several replicas');
    for (const [name, web] of [['nginx', nginx!], ['httpd', httpd!]] as const) {
      assert.equal(web.environment!.APP_SOCKET, socket, `${name}: APP_SOCKET`);
      assert.deepEqual(named(web).find(([v]) => v === volume), [volume, socketDir], `${name} mounts the socket volume`);
      assert.equal(web.environment!.APP_TCP, `app-tcp:${port}`, `${name}: APP_TCP`);
      assert.ok(web.depends_on && 'app' in web.depends_on && 'app-tcp' in web.depends_on && 'cgi-dir' in web.depends_on, `${name} starts after the apps`);
      // The templates point at CGI_ROOT/cgi-bin, which must be the directory the responder serves.
      assert.equal(web.environment!.CGI_SOCKET, cgiSocket, `${name}: CGI_SOCKET`);
      assert.equal(web.environment!.CGI_ROOT, cgiRoot, `${name}: CGI_ROOT is the parent of --cgi-dir`);
      assert.equal(path.posix.dirname(cgiSocket), socketDir, 'the cgi-dir socket is in the shared volume');
      assert.deepEqual(named(cgiDir).find(([v]) => v === volume), [volume, socketDir], 'cgi-dir mounts the socket volume');
    }
  });

  test('the commands are valid for the CLI, name files that the image contains, and health checks use fcgi --check', async (t) => {
    const c = need(t);
    if (!c) return;
    const { serveCommand } = await import('../src/commands/serve.ts');
    for (const name of ['app', 'app-tcp', 'cgi-dir', 'cgi']) {
      const [cmd, ...argv] = c.services[name]!.command!;
      const values = parse(cmd === 'fcgi' ? fcgiCommand : serveCommand, argv);
      for (const key of ['app', 'cgi-dir'] as const) {
        const file = values[key];
        if (typeof file === 'string') assert.ok(imageFile(file) && fs.existsSync(imageFile(file)!), `${name}: ${file} is copied into the image`);
      }
    }
    for (const name of ['app', 'cgi-dir']) {
      const check: string[] = c.services[name]!.healthcheck!.test;
      assert.deepEqual(check.slice(0, 5), ['CMD', 'node', '/app/bin/cgi-runner.js', 'fcgi', '--check']);
      assert.equal(check[5], flagOf(c.services[name]!.command!, '--listen'));
      parse(fcgiCommand, check.slice(4));
    }
    // `serve` runs with the Node flags `npm start` gives it.
    const nodeOptions = c.services.cgi!.environment?.NODE_OPTIONS ?? '';
    for (const flag of serveNodeFlags) assert.ok(nodeOptions.split(/\s+/).includes(flag), `cgi: NODE_OPTIONS has ${flag}`);
    // The scripts' health check asks for a script that the image has.
    const cgiCheck = c.services['cgi-dir']!.healthcheck!.test;
    assert.ok(fs.existsSync(imageFile(path.posix.join(flagOf(cgiCheck, '--check-root')!, flagOf(cgiCheck, '--check-path')!))!));
  });

  test('deploy/README.md lists a URL for each published port', (t) => {
    const c = need(t);
    if (!c) return;
    const readme = fs.readFileSync(path.join(deployDir, 'README.md'), 'utf8');
    for (const [name, service] of Object.entries(c.services)) {
      for (const p of service.ports ?? []) assert.match(readme, new RegExp(`http://localhost:${p.published}/`), `${name}: port ${p.published}`);
    }
  });
});

describe('Dockerfile', () => {
  test('node:20-bookworm-slim, npm ci, foreground entrypoint, health check through fcgi --check', () => {
    const lines = dockerfile();
    assert.equal(lines[0]![0], 'FROM');
    for (const [, image] of lines.filter(([k]) => k === 'FROM')) assert.match(image, /^node:20-bookworm-slim\b/);
    assert.ok(lines.some(([k, a]) => k === 'RUN' && /\bnpm ci\b/.test(a)));
    for (const [k, args] of lines) {
      // Files from a build stage are checked below; the rest come from the repository.
      if (k !== 'COPY' || args.startsWith('--from=')) continue;
      for (const src of args.split(/\s+/).slice(0, -1)) assert.ok(fs.existsSync(path.join(repoRoot, src)), `COPY ${src}: exists`);
    }
    const entrypoint = JSON.parse(lines.find(([k]) => k === 'ENTRYPOINT')![1]) as string[];
    assert.equal(entrypoint[0], 'node');
    assert.ok(fs.existsSync(imageFile(entrypoint[1]!)!), 'the entrypoint script is copied');
    const cmd = JSON.parse(lines.find(([k]) => k === 'CMD')![1]) as string[];
    assert.equal(cmd[0], 'fcgi');
    const values = parse(fcgiCommand, cmd.slice(1));
    assert.ok(fs.existsSync(imageFile(values.app as string)!), 'the default app is copied');
    assert.equal(lines.find(([k]) => k === 'STOPSIGNAL')?.[1], 'SIGTERM');
    const health = lines.find(([k]) => k === 'HEALTHCHECK')![1];
    const probe = JSON.parse(health.slice(health.indexOf('CMD') + 3).trim()) as string[];
    assert.deepEqual(probe.slice(0, 4), ['node', '/app/bin/cgi-runner.js', 'fcgi', '--check']);
    // The CMD listens on every interface; the probe runs inside the container and asks loopback.
    assert.equal(probe[4], (values.listen as string).replace(/^0\.0\.0\.0:/, '127.0.0.1:'), 'the health check asks the port the CMD listens on');
    assert.ok(lines.some(([k, a]) => k === 'USER' && a !== 'root'), 'runs unprivileged');
  });

  test('the build stage compiles the in-process CGI spawner, and the image gets it', () => {
    const lines = dockerfile();
    const stages = lines.findIndex(([k], i) => k === 'FROM' && i > 0);
    assert.ok(stages > 0, 'a build stage, then the image');
    const build = lines.slice(0, stages);
    const install = build.findIndex(([k, a]) => k === 'RUN' && /\bnpm ci\b/.test(a));
    assert.ok(install > 0, 'npm ci in the build stage');
    // node-gyp needs python3, make and a compiler, and the addon's sources, before npm ci runs.
    assert.ok(build.slice(0, install).some(([k, a]) => k === 'RUN' && /apt-get install.*\bpython3\b/.test(a) && /\bmake\b/.test(a) && /\bg\+\+/.test(a)));
    for (const src of ['binding.gyp', 'src/cgi/native']) {
      assert.ok(build.slice(0, install).some(([k, a]) => k === 'COPY' && a.split(/\s+/).includes(src)), `${src} is there before npm ci`);
    }
    assert.match(build[install]![1], /test -f build\/Release\/spawn\.node/, 'a failed build fails the image');
    assert.ok(lines.slice(stages).some(([k, a]) => k === 'COPY' && /^--from=\w+ \/app\/build\/Release\/spawn\.node /.test(a)), 'the image gets the addon');
  });

  test('.dockerignore keeps node_modules and a local build out of the build context', () => {
    const ignore = fs.readFileSync(path.join(repoRoot, '.dockerignore'), 'utf8').split('\n');
    assert.ok(ignore.includes('node_modules'));
    assert.ok(ignore.includes('build'));
  });
});
