// The CGI scripts the soak and fault runs serve through `cgi-runner serve`: the same routes as app.ts, in Perl (which starts in a few ms).
import fs from 'node:fs';
import path from 'node:path';

export const CGI_SCRIPTS: Record<string, string> = {
  hello: `#!/usr/bin/perl
print "Content-Type: text/plain\\r\\n\\r\\nhello\\n";
`,
  echo: `#!/usr/bin/perl
use Digest::SHA;
binmode STDIN;
my $sha = Digest::SHA->new(256);
my $left = $ENV{CONTENT_LENGTH} || 0;
my $size = 0;
while ($left > 0) {
  my $n = read(STDIN, my $buf, $left > 65536 ? 65536 : $left);
  last unless $n;
  $sha->add($buf);
  $size += $n;
  $left -= $n;
}
print "Content-Type: application/json\\r\\n\\r\\n{\\"size\\":$size,\\"sha256\\":\\"" . $sha->hexdigest . "\\"}";
`,
  // The same bytes as streamChunk(): chunk i holds (i * 7 + j) & 0xff at offset j.
  stream: `#!/usr/bin/perl
$| = 1;
binmode STDOUT;
my %q = map { split /=/, $_, 2 } split /&/, ($ENV{QUERY_STRING} || '');
my $chunks = $q{chunks} || 16;
my $size = $q{size} || 4096;
print "Content-Type: application/octet-stream\\r\\n\\r\\n";
for my $i (0 .. $chunks - 1) {
  print pack('C*', map { ($i * 7 + $_) & 0xff } 0 .. $size - 1);
}
`,
  flaky: `#!/usr/bin/perl
if (($ENV{QUERY_STRING} || '') =~ /throw=/) { print STDERR "flaky: failing on request\\n"; exit 1; }
print "Content-Type: text/plain\\r\\n\\r\\nfine\\n";
`,
  // Forks a child that outlives the script, then exits at once.
  forker: `#!/usr/bin/perl
my $pid = fork();
if ($pid == 0) { close STDOUT; close STDERR; $0 = "soak-orphan " . ($ENV{QUERY_STRING} || ''); sleep 300; exit 0; }
print "Content-Type: text/plain\\r\\n\\r\\nchild $pid\\n";
`,
  // Writes until it is stopped, recording the bytes it managed to write.
  forever: `#!/usr/bin/perl
$| = 1;
$0 = "soak-forever " . ($ENV{QUERY_STRING} || '');
print "Content-Type: text/plain\\r\\n\\r\\n";
my $line = ("x" x 1023) . "\\n";
print $line while 1;
`,
};

/** Writes the scripts into `dir` (created), executable. */
export function writeCgiScripts(dir: string, scripts: Record<string, string> = CGI_SCRIPTS): void {
  fs.mkdirSync(dir, { recursive: true });
  for (const [name, body] of Object.entries(scripts)) {
    const file = path.join(dir, name);
    fs.writeFileSync(file, body);
    fs.chmodSync(file, 0o755);
  }
}
