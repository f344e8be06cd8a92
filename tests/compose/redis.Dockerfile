# Stand-in for the compose file's redis:7 (no registry here): Debian's redis-server.
FROM docker.io/library/debian:12
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server redis-tools \
 && rm -rf /var/lib/apt/lists/*
# The official image runs without protected mode when no config file is given; Debian's binary
# defaults to protected mode, which refuses the other containers.
RUN printf '#!/bin/sh\nif [ "$1" = redis-server ]; then shift; exec redis-server --protected-mode no --bind 0.0.0.0 "$@"; fi\nexec "$@"\n' \
      > /usr/local/bin/entry && chmod +x /usr/local/bin/entry
ENTRYPOINT ["/usr/local/bin/entry"]
CMD ["redis-server"]
