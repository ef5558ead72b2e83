#!/usr/bin/env bash
# bench/http: bootcast's chunk serving (GET /chunks/ID with its API token checked) against nginx
# serving the same chunk files as static files, at 1, 16 and 64 requests in flight over
# keep-alive connections (examples/http_load, one client thread). Objects: the store's chunks of
# 32-64 KiB from a random image. Best of N runs per case, alternating servers; prints req/s,
# MB/s, p99 and bootcast / nginx (goal >= 0.9). Loopback only.
#
#   bench/http/run.sh [--runs N] [--requests N] [--size-mb M]
#
# nginx is not installed: its .debs are fetched with `apt-get download` and unpacked into the
# cache dir (no service on port 80).
set -euo pipefail
cd "$(dirname "$0")/../.."
die() { printf 'bench/http: error: %s\n' "$*" >&2; exit 1; }
log() { printf 'bench/http: %s\n' "$*" >&2; }
runs=3 requests=20000 size_mb=256
while (($#)); do
    case $1 in
    --runs) runs=$2; shift 2 ;;
    --requests) requests=$2; shift 2 ;;
    --size-mb) size_mb=$2; shift 2 ;;
    *) die "unknown argument $1" ;;
    esac
done
cargo build --release --locked --bin bootcast --example http_load >&2
root=${CARGO_TARGET_DIR:-target}
target=$root/x86_64-unknown-linux-gnu/release
[[ -x $target/bootcast ]] || target=$root/release
bin=$target/bootcast load=$target/examples/http_load
cache=${BOOTCAST_CACHE:-.cache}/bench-http
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)

# nginx, unpacked
if [[ ! -x $cache/pkgs/x/usr/sbin/nginx ]]; then
    log "apt-get download nginx nginx-common (unpacked into $cache/pkgs, not installed)"
    mkdir -p "$cache/pkgs"
    (cd "$cache/pkgs" && rm -f ./*.deb && apt-get download nginx nginx-common >&2 &&
        for d in ./*.deb; do dpkg-deb -x "$d" x; done)
fi
nginx=$cache/pkgs/x/usr/sbin/nginx
"$nginx" -v 2>/dev/null || "$nginx" -v || die "the unpacked nginx does not run"

# a store of one random image, made once
data=$cache/data-$size_mb
if [[ ! -f $data/list.txt ]]; then
    rm -rf "$data"
    log "a store of a random $size_mb MB image in $data"
    head -c "${size_mb}M" /dev/urandom >"$cache/img"
    "$bin" --data "$data" image add bench "$cache/img" >/dev/null
    rm -f "$cache/img"
    # the chunks of 32-64 KiB, in a fixed random order
    find "$data/store/chunks" -type f -size +31k -size -65k -printf '%f %s\n' |
        shuf --random-source=<(yes) >"$data/list.txt"
fi
objects=$(wc -l <"$data/list.txt")
((objects > 100)) || die "only $objects chunks of 32-64 KiB in $data"
chmod -R a+rX "$data/store"
cat "$data"/store/chunks/*/* >/dev/null # page cache

work=$(mktemp -d)
server=""
stop() { [[ -n $server ]] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null; server=""; }
trap 'stop; rm -rf "$work"' EXIT

bport=$((20000 + RANDOM % 20000)) nport=$((40000 + RANDOM % 20000))
cat >"$work/bootcast.toml" <<EOF
[http]
max_connections_per_address = 256
EOF
cat >"$work/nginx.conf" <<EOF
worker_processes 2;
error_log $work/nginx.err warn;
pid $work/nginx.pid;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path $work/body;
    proxy_temp_path $work/proxy;
    fastcgi_temp_path $work/fastcgi;
    uwsgi_temp_path $work/uwsgi;
    scgi_temp_path $work/scgi;
    default_type application/octet-stream;
    server {
        listen 127.0.0.1:$nport;
        location ~ "^/chunks/([0-9a-f]{3})([0-9a-f]+)\$" {
            alias $data/store/chunks/\$1/\$1\$2;
        }
    }
}
EOF

start() {
    case $1 in
    bootcast)
        "$bin" --data "$data" serve --config "$work/bootcast.toml" --http "127.0.0.1:$bport" \
            --https off --tftp off 2>"$work/serve.log" &
        server=$!
        for _ in $(seq 1 100); do
            grep -q '^bootcast: ready' "$work/serve.log" && return 0
            kill -0 "$server" 2>/dev/null || { cat "$work/serve.log" >&2; die "bootcast exited"; }
            sleep 0.2
        done
        die "bootcast did not start"
        ;;
    nginx)
        "$nginx" -p "$work" -c "$work/nginx.conf" -g 'daemon off;' 2>>"$work/nginx.err" &
        server=$!
        for _ in $(seq 1 100); do
            curl -fso /dev/null "http://127.0.0.1:$nport/chunks/$(head -n1 "$data/list.txt" | cut -d' ' -f1)" && return 0
            kill -0 "$server" 2>/dev/null || { cat "$work/nginx.err" >&2; die "nginx exited"; }
            sleep 0.1
        done
        die "nginx did not answer"
        ;;
    esac
}

fetch() { # SERVER CONCURRENCY -> JSON line
    case $1 in
    bootcast) "$load" --base "http://127.0.0.1:$bport/chunks/" --list "$data/list.txt" \
        --concurrency "$2" --requests "$requests" --token-file "$data/api-token" ;;
    nginx) "$load" --base "http://127.0.0.1:$nport/chunks/" --list "$data/list.txt" \
        --concurrency "$2" --requests "$requests" ;;
    esac
}

declare -A best p99
log "$objects objects of 32-64 KiB, $requests requests per run, best of $runs, servers alternating"
for c in 1 16 64; do
    for r in $(seq "$runs"); do
        for s in bootcast nginx; do
            start "$s"
            line=$(fetch "$s" "$c")
            stop
            errors=$(sed -n 's/.*"errors":\([0-9]*\).*/\1/p' <<<"$line")
            ((errors == 0)) || die "$s at $c: $errors failed requests: $line"
            rps=$(sed -n 's/.*"req_per_s":\([0-9.]*\).*/\1/p' <<<"$line")
            log "run $r, $s, $c in flight: $(printf '%.0f' "$rps") req/s"
            if [[ -z ${best[$s/$c]:-} ]] || (($(echo "$rps > ${best[$s/$c]}" | bc -l))); then
                best[$s/$c]=$rps
                p99[$s/$c]=$(sed -n 's/.*"p99_ms":\([0-9.]*\).*/\1/p' <<<"$line")
            fi
        done
    done
done

avg=$(awk '{ s += $2 } END { printf "%.0f", s / NR }' "$data/list.txt")
printf '\n%-10s %14s %14s %12s %12s %16s  %s\n' "in flight" "bootcast req/s" "nginx req/s" \
    "bootcast p99" "nginx p99" "bootcast/nginx" "goal >= 0.9"
for c in 1 16 64; do
    ratio=$(echo "${best[bootcast/$c]} / ${best[nginx/$c]}" | bc -l)
    goal=$(if (($(echo "$ratio >= 0.9" | bc -l))); then echo met; else echo missed; fi)
    printf '%-10s %14.0f %14.0f %10.2f ms %10.2f ms %16.2f  %s\n' "$c" "${best[bootcast/$c]}" \
        "${best[nginx/$c]}" "${p99[bootcast/$c]}" "${p99[nginx/$c]}" "$ratio" "$goal"
done
printf '(objects average %s bytes; MB/s = req/s x that)\n' "$avg"
