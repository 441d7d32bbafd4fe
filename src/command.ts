// A small command definition on top of util.parseArgs: typed flags with defaults, and `--help` generated from them.
import { parseArgs } from 'node:util';

export interface FlagSpec {
  type: 'string' | 'boolean';
  description: string;
  /** Shown in --help; applied when the flag is absent. */
  default?: string | boolean;
  /** The value's name in --help, e.g. ADDRESS. */
  valueName?: string;
  multiple?: boolean;
  short?: string;
}

export interface Command {
  name: string;
  summary: string;
  /** Extra lines printed after the flag list. */
  details?: string;
  flags: Record<string, FlagSpec>;
  run(values: Record<string, string | boolean | string[] | undefined>, positionals: string[]): Promise<number | void> | number | void;
}

/** What `--help` is made from: a command of `cgi-runner`, or a script run as `npm run NAME --`. */
type HelpSource = Pick<Command, 'summary' | 'details' | 'flags'> & { usage: string };

export function helpText(command: Command): string {
  return formatHelp({ ...command, usage: `cgi-runner ${command.name} [flags]` });
}

function formatHelp(command: HelpSource): string {
  const lines = [`usage: ${command.usage}`, '', command.summary, '', 'flags:'];
  const entries = Object.entries(command.flags).map(([name, spec]) => {
    const left = `  --${name}${spec.type === 'string' ? ` ${spec.valueName ?? 'VALUE'}` : ''}`;
    const def = spec.default === undefined || spec.default === false ? '' : ` (default: ${spec.default})`;
    const rep = spec.multiple ? ' (repeatable)' : '';
    return [left, `${spec.description}${def}${rep}`] as const;
  });
  entries.push(['  --help', 'show this help']);
  const width = Math.max(...entries.map(([l]) => l.length)) + 2;
  for (const [left, right] of entries) lines.push(left.padEnd(width) + right);
  if (command.details) lines.push('', command.details);
  return lines.join('\n') + '\n';
}

/** Parses argv for a command; throws a TypeError with a readable message on unknown or malformed flags. */
export function parseCommandArgs(command: Pick<Command, 'flags'>, argv: string[]) {
  const options: Record<string, { type: 'string' | 'boolean'; multiple?: boolean; short?: string; default?: string | boolean }> = {};
  for (const [name, spec] of Object.entries(command.flags)) {
    options[name] = { type: spec.type };
    if (spec.multiple) options[name].multiple = true;
    if (spec.short) options[name].short = spec.short;
    if (spec.default !== undefined && !spec.multiple) options[name].default = spec.default;
  }
  options.help = { type: 'boolean', short: 'h' };
  const { values, positionals } = parseArgs({ args: argv, options, allowPositionals: true, strict: true });
  return { values: values as Record<string, string | boolean | string[] | undefined>, positionals };
}

/** Reads an integer flag, failing with the flag's name when it is not one. */
export function intFlag(values: Record<string, unknown>, name: string, min = 0): number {
  const raw = values[name];
  const n = typeof raw === 'string' ? Number(raw) : NaN;
  if (!Number.isInteger(n) || n < min) throw new TypeError(`--${name} must be an integer >= ${min}, got ${JSON.stringify(raw)}`);
  return n;
}

/** A number flag (fractions allowed, as in --duration 0.5) greater than `above`. */
export function numberFlag(values: Record<string, unknown>, name: string, above = 0): number {
  const raw = values[name];
  const n = typeof raw === 'string' ? Number(raw) : NaN;
  if (!Number.isFinite(n) || n <= above) throw new TypeError(`--${name} must be a number > ${above}, got ${JSON.stringify(raw)}`);
  return n;
}

export function optionalIntFlag(values: Record<string, unknown>, name: string, min = 0): number | undefined {
  return values[name] === undefined ? undefined : intFlag(values, name, min);
}

export interface ScriptSpec {
  /** The npm script, e.g. `bench:cgi`. */
  script: string;
  summary: string;
  details?: string;
  flags: Record<string, FlagSpec>;
}

/**
 * A standalone script's flags (`npm run SCRIPT -- …`), with the same flag specs and generated
 * `--help` as the commands: prints the help and exits 0 on --help, and exits 2 on a bad flag.
 */
export function parseScriptArgs(spec: ScriptSpec, argv: string[] = process.argv.slice(2)): Record<string, string | boolean | string[] | undefined> {
  const source: HelpSource = { ...spec, usage: `npm run ${spec.script} -- [flags]` };
  let values;
  try {
    values = parseCommandArgs(spec, argv).values;
  } catch (err) {
    process.stderr.write(`${spec.script}: ${(err as Error).message}\n\n${formatHelp(source)}`);
    process.exit(2);
  }
  if (values.help) {
    process.stdout.write(formatHelp(source));
    process.exit(0);
  }
  return values;
}
