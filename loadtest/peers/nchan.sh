#!/usr/bin/env bash
# Start or stop Nchan (nginx + libnginx-mod-nchan) as the load harness's peer.
#
#   loadtest/peers/nchan.sh start [--port P] [--store memory|redis] [--workers N] [--dir DIR]
#   loadtest/peers/nchan.sh stop  [--dir DIR]
#   loadtest/peers/nchan.sh status [--dir DIR]
#
# `start` installs the Debian packages when missing, writes nginx.conf into
# DIR (default loadtest/out/nchan), starts nginx in the foreground of a
# background process (daemon off, so no init system manages it), waits until
# it answers, and prints `listening on 127.0.0.1:PORT` and `pid PID` (the
# nginx master; its workers are its children). With `--store redis` it first
# starts its own redis-server on a free loopback port inside DIR; it never
# touches a Redis it did not start. Everything binds to 127.0.0.1 only.
#
# Endpoints (the same three transports the gateway serves, plus publish):
#   GET  /sub?id=CH[,CH2...]   websocket, eventsource or long-poll, chosen by
#                              the request (Upgrade, Accept: text/event-stream,
#                              otherwise long-poll); several ids multiplex
#   GET  /poll?id=CH           interval polling (answers at once, 304 if none;
#                              one message per answer)
#   POST /pub?id=CH            publish the request body to CH
#   GET  /nchan_status         nchan_stub_status counters
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cmd="${1:-}"
shift || true
port=0
store=memory
workers=2
dir="$here/../out/nchan"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --port) port="$2"; shift 2 ;;
    --store) store="$2"; shift 2 ;;
    --workers) workers="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

# A free TCP port on 127.0.0.1, asked of the kernel (bind to port 0).
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null \
    || shuf -i 20000-40000 -n 1
}

install_if_missing() {
  if [[ -x /usr/sbin/nginx && -e /usr/lib/nginx/modules/ngx_nchan_module.so ]]; then
    return
  fi
  export DEBIAN_FRONTEND=noninteractive
  # policy-rc.d may refuse to start the packaged service; that is what we want.
  apt-get update -qq >&2
  apt-get install -y -qq nginx libnginx-mod-nchan >&2
}

# Wait (bounded) until a URL answers at all.
wait_http() {
  local url="$1" tries=100
  while (( tries-- > 0 )); do
    if curl -s -o /dev/null --max-time 1 "$url"; then return 0; fi
    sleep 0.1
  done
  return 1
}

write_conf() {
  local conf="$dir/nginx.conf" redis_port="${1:-}"
  local store_lines=""
  local upstream=""
  if [[ "$store" == redis ]]; then
    upstream="upstream nchan_redis { nchan_redis_server redis://127.0.0.1:${redis_port}; }"
    store_lines="nchan_redis_pass nchan_redis;"
  fi
  local user_line=""
  if [[ "$(id -u)" == 0 ]]; then user_line="user nobody nogroup;"; fi
  cat >"$conf" <<CONF
# Written by loadtest/peers/nchan.sh: Nchan as the harness's peer, loopback only.
${user_line}
daemon off;
master_process on;
worker_processes ${workers};
worker_rlimit_nofile 20000;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
load_module /usr/lib/nginx/modules/ngx_nchan_module.so;

events {
  worker_connections 19000;
  multi_accept on;
}

http {
  access_log off;
  client_body_temp_path ${dir}/tmp/body;
  proxy_temp_path ${dir}/tmp/proxy;
  fastcgi_temp_path ${dir}/tmp/fastcgi;
  uwsgi_temp_path ${dir}/tmp/uwsgi;
  scgi_temp_path ${dir}/tmp/scgi;
  client_body_buffer_size 64k;
  client_max_body_size 1m;
  keepalive_requests 1000000;
  keepalive_timeout 120s;

  # Room for many channels and a history deep enough for resume after churn.
  nchan_shared_memory_size 512m;
  nchan_message_buffer_length 1000;
  nchan_message_timeout 1h;
  ${upstream}

  server {
    listen 127.0.0.1:${port} backlog=8192;
    server_name localhost;
    nchan_subscriber_first_message oldest;

    location = /sub {
      nchan_subscriber websocket eventsource longpoll;
      nchan_channel_id \$arg_id;
      nchan_channel_id_split_delimiter ",";
      nchan_subscriber_timeout 60s;
      # Long-poll answers carry every waiting message (multipart/mixed),
      # as the gateway's long-poll does.
      nchan_longpoll_multipart_response on;
      ${store_lines}
    }

    # Interval polling answers one message per request: Nchan 1.3.6 answers
    # 304 to every interval poll once multipart answers are enabled here.
    location = /poll {
      nchan_subscriber intervalpoll;
      nchan_channel_id \$arg_id;
      nchan_channel_id_split_delimiter ",";
      ${store_lines}
    }

    location = /pub {
      nchan_publisher http;
      nchan_channel_id \$arg_id;
      ${store_lines}
    }

    location = /nchan_status {
      nchan_stub_status;
    }
  }
}
CONF
}

start() {
  install_if_missing
  mkdir -p "$dir/tmp"
  dir="$(cd "$dir" && pwd)"
  if [[ -f "$dir/master.pid" ]] && kill -0 "$(cat "$dir/master.pid")" 2>/dev/null; then
    echo "nchan already running in $dir (pid $(cat "$dir/master.pid"))" >&2
    exit 1
  fi
  [[ "$port" == 0 ]] && port="$(free_port)"

  local redis_port=""
  if [[ "$store" == redis ]]; then
    redis_port="$(free_port)"
    setsid redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no \
      --dir "$dir" --daemonize no >"$dir/redis.log" 2>&1 </dev/null &
    echo $! >"$dir/redis.pid"
    local tries=50
    until redis-cli -p "$redis_port" ping >/dev/null 2>&1; do
      (( tries-- > 0 )) || { echo "redis-server did not start" >&2; exit 1; }
      sleep 0.1
    done
  elif [[ "$store" != memory ]]; then
    echo "--store must be memory or redis" >&2; exit 2
  fi

  write_conf "$redis_port"
  /usr/sbin/nginx -t -p "$dir" -c "$dir/nginx.conf" >"$dir/configtest.log" 2>&1 \
    || { cat "$dir/configtest.log" >&2; exit 1; }

  # The harness raises its own soft limit; nginx does so via worker_rlimit_nofile.
  ulimit -n "$(ulimit -Hn)" || true
  setsid /usr/sbin/nginx -p "$dir" -c "$dir/nginx.conf" >"$dir/stdout.log" 2>&1 </dev/null &
  echo $! >"$dir/master.pid"
  echo "$port" >"$dir/port"
  wait_http "http://127.0.0.1:${port}/nchan_status" \
    || { echo "nginx did not answer; see $dir/error.log" >&2; cat "$dir/error.log" >&2; exit 1; }
  echo "listening on 127.0.0.1:${port}"
  echo "pid $(cat "$dir/master.pid")"
  [[ -n "$redis_port" ]] && echo "redis 127.0.0.1:${redis_port} pid $(cat "$dir/redis.pid")"
  return 0
}

# Stop a process recorded in a pid file: TERM, wait (bounded), then KILL.
stop_pidfile() {
  local file="$1" pid tries=50
  [[ -f "$file" ]] || return 0
  pid="$(cat "$file")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null && (( tries-- > 0 )); do sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

stop() {
  stop_pidfile "$dir/master.pid"
  stop_pidfile "$dir/redis.pid"
  echo "stopped"
}

status() {
  if [[ -f "$dir/master.pid" ]] && kill -0 "$(cat "$dir/master.pid")" 2>/dev/null; then
    echo "listening on 127.0.0.1:$(cat "$dir/port")"
    echo "pid $(cat "$dir/master.pid")"
  else
    echo "not running"; exit 1
  fi
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status [--port P] [--store memory|redis] [--workers N] [--dir DIR]" >&2; exit 2 ;;
esac
