#!/bin/sh
# A health check with libfcgi's cgi-fcgi (Debian: libfcgi-bin), for load balancers and monitors
# that have no Node: sends GET PATH to ADDRESS and exits 0 on a 2xx or 3xx answer, 1 otherwise.
# Usage: check-with-cgi-fcgi.sh host:port|/path/to.sock [PATH]
# (With Node at hand, `cgi-runner fcgi --check ADDRESS` also asks GET_VALUES and has a timeout.)
set -u
address=${1:?usage: $0 host:port|/path/to.sock [PATH]}
path=${2:-/}
# cgi-fcgi sends its environment as the FastCGI params, so it gets exactly these.
out=$(env -i REQUEST_METHOD=GET REQUEST_URI="$path" SCRIPT_NAME="${path%%\?*}" \
  QUERY_STRING="$(case $path in *\?*) printf %s "${path#*\?}";; esac)" \
  SERVER_PROTOCOL=HTTP/1.1 GATEWAY_INTERFACE=CGI/1.1 SERVER_NAME=localhost SERVER_PORT=80 \
  REMOTE_ADDR=127.0.0.1 HTTP_HOST=localhost HTTP_USER_AGENT=cgi-fcgi-check \
  timeout 5 cgi-fcgi -bind -connect "$address" </dev/null 2>&1) || {
  echo "unhealthy: $address: cgi-fcgi failed: $out" >&2
  exit 1
}
# cgi-fcgi prints the CGI answer and exits 0 even for a 404: read the Status line ourselves.
status=$(printf '%s\n' "$out" | sed -n '1,/^\r\{0,1\}$/s/^[Ss]tatus: *\([0-9][0-9][0-9]\).*/\1/p' | head -n 1)
status=${status:-200}
case $status in
  2??|3??) echo "healthy: $address: GET $path: $status"; exit 0 ;;
  *) echo "unhealthy: $address: GET $path: $status" >&2; exit 1 ;;
esac
