# cgi-runner in a container: by default the FastCGI responder on 0.0.0.0:9000 serving deploy/site.ts
# (every app in fcgi/). Runs in the foreground as PID 1's child (use --init or compose's init: true),
# access lines on stdout, errors on stderr; SIGTERM (docker stop) finishes in-flight requests, exits 0.

# The build stage: `npm ci` also compiles the in-process CGI spawner (src/cgi/native, a small C
# addon) with node-gyp, which needs python3, make and a C compiler; the image itself does not.
FROM node:20-bookworm-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3 make g++ && rm -rf /var/lib/apt/lists/*
WORKDIR /app
# The image's own Node headers: node-gyp downloads none.
ENV npm_config_nodedir=/usr/local
COPY package.json package-lock.json binding.gyp ./
COPY src/cgi/native ./src/cgi/native
# The install script falls back quietly when the addon does not build; here that is an error.
RUN npm ci --omit=dev && npm cache clean --force && test -f build/Release/spawn.node

FROM node:20-bookworm-slim
WORKDIR /app
ENV NODE_ENV=production
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/build/Release/spawn.node ./build/Release/spawn.node
COPY package.json ./
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
