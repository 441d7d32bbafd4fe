# cgi-runner in a container: by default the FastCGI responder on 0.0.0.0:9000 serving deploy/site.ts
# (every app in fcgi/). Runs in the foreground as PID 1's child (use --init or compose's init: true),
# access lines on stdout, errors on stderr; SIGTERM (docker stop) finishes in-flight requests, exits 0.
FROM node:20-bookworm-slim

WORKDIR /app
ENV NODE_ENV=production
COPY package.json package-lock.json ./
RUN npm ci --omit=dev && npm cache clean --force
COPY bin ./bin
COPY src ./src
COPY fcgi ./fcgi
COPY cgi-bin ./cgi-bin
COPY deploy/site.ts ./deploy/site.ts

# The directory for a unix socket shared with a web server's container through a named volume:
# a new volume takes this directory's owner, so the unprivileged user can create the socket there.
RUN mkdir -p /run/cgi-runner && chown node:node /run/cgi-runner
USER node

EXPOSE 9000
STOPSIGNAL SIGTERM
ENTRYPOINT ["node", "/app/bin/cgi-runner.js"]
CMD ["fcgi", "--listen", "0.0.0.0:9000", "--app", "/app/deploy/site.ts"]
# GET_VALUES plus one GET / through the FastCGI protocol itself; exit 0 when the app answers 2xx/3xx.
HEALTHCHECK --interval=30s --timeout=10s --start-period=15s --retries=3 \
    CMD ["node", "/app/bin/cgi-runner.js", "fcgi", "--check", "127.0.0.1:9000"]
