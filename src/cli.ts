// The command line entry point: dispatches `serve`, `fcgi` and `bench` to their modules.
import { helpText, parseCommandArgs, type Command } from './command.ts';

const commands: Record<string, () => Promise<Command>> = {
  serve: async () => (await import('./commands/serve.ts')).serveCommand,
  fcgi: async () => (await import('./commands/fcgi.ts')).fcgiCommand,
  bench: async () => (await import('./commands/bench.ts')).benchCommand,
};

const usage = `usage: cgi-runner <command> [flags]

commands:
  serve   HTTP server for cgi-bin/ (a process per request) and fcgi/ apps (persistent responders)
  fcgi    FastCGI responder hosting a Fetch-style app, or classic CGI scripts with --cgi-dir
  bench   latency benchmark: CGI against FastCGI, against php-fpm, fcgiwrap and Apache

Run 'cgi-runner <command> --help' for a command's flags.
`;

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(usage);
    return name ? 0 : 2;
  }
  const load = commands[name];
  if (!load) {
    process.stderr.write(`cgi-runner: unknown command ${JSON.stringify(name)}\n\n${usage}`);
    return 2;
  }
  const command = await load();
  let parsed;
  try {
    parsed = parseCommandArgs(command, rest);
  } catch (err) {
    process.stderr.write(`cgi-runner ${name}: ${(err as Error).message}\n\n${helpText(command)}`);
    return 2;
  }
  if (parsed.values.help) {
    process.stdout.write(helpText(command));
    return 0;
  }
  try {
    return (await command.run(parsed.values, parsed.positionals)) ?? 0;
  } catch (err) {
    if (err instanceof TypeError || (err as { code?: string }).code === 'USAGE') {
      process.stderr.write(`cgi-runner ${name}: ${(err as Error).message}\n`);
      return 2;
    }
    throw err;
  }
}

process.exitCode = await main(process.argv.slice(2));
