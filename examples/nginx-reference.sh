#!/bin/sh
# nginx as a plain reverse proxy in front of sigorest-bench's fake upstream: the reference
# for a gateway that does (almost) nothing of its own, to measure sigorest against.
#
#   target/release/sigorest-bench -parallel 0 -compare-name nginx \
#     -compare-cmd "sh $PWD/examples/nginx-reference.sh {port} {fake}"
#
# Event loop, one worker process per core, keep-alive connections to the upstream, no
# buffering (streams pass event by event), no access log. Needs nginx in PATH (Debian:
# nginx-light). It runs in the directory the bench gives it and writes its files there.
# The bench's parallel slow calls need a second model, which a byte proxy cannot route:
# hence -parallel 0.
set -eu
port=$1
fake=$2
dir=$(pwd)
mkdir -p "$dir/tmp"
cat >"$dir/nginx.conf" <<CONF
worker_processes auto;
daemon off;
pid $dir/nginx.pid;
error_log stderr warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    keepalive_requests 1000000;
    upstream fake {
        server $fake;
        keepalive 256;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://fake;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
CONF
exec nginx -p "$dir" -c "$dir/nginx.conf" -e stderr
