#!/bin/sh
# cgi-runner under spawn-fcgi: spawn-fcgi binds the socket and hands it to the responder as fd 0
# (FCGI_LISTENSOCK_FILENO); with -n it execs the responder in the foreground, under a supervisor
# (runit, s6, daemontools, systemd) that restarts it. The command line is:
#
#   spawn-fcgi -n -s /run/cgi-runner/app.sock -M 0660 -U www-data -G www-data -d /opt/cgi-runner -- \
#     /usr/bin/node /opt/cgi-runner/bin/cgi-runner.js fcgi --app /opt/cgi-runner/deploy/site.ts
#
# Usage: deploy/spawn-fcgi.sh [SOCKET [APP]]. CGI_RUNNER_ROOT defaults to this script's repository.
# -U/-G (the socket's owner) need root; without root the socket keeps its creator as owner.
set -eu
root=${CGI_RUNNER_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
socket=${1:-/run/cgi-runner/app.sock}
app=${2:-$root/deploy/site.ts}
node=$(command -v node)
owner=""
if [ "$(id -u)" = 0 ]; then owner="-U www-data -G www-data"; fi
# shellcheck disable=SC2086
exec spawn-fcgi -n -s "$socket" -M 0660 $owner -d "$root" -- \
  "$node" "$root/bin/cgi-runner.js" fcgi --app "$app"
