# lib.sh - shell functions shared by scripts/quickstart and scripts/test:
# install missing Debian packages, and run a private PostgreSQL cluster.
# shellcheck shell=bash
#
# Sourced, never run. Callers use `set -euo pipefail`.
# shellcheck disable=SC2034 # the package lists are used by the callers

GRIDD_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# What building and running gridd needs.
GRIDD_BUILD_PKGS=(
	build-essential pkg-config meson ninja-build
	libevent-dev libpq-dev libprotobuf-c-dev protobuf-c-compiler
	libssl-dev libsystemd-dev libcmocka-dev libjson-c-dev
	postgresql-15 postgresql-client-15 postgresql-15-postgis-3
	python3 util-linux xz-utils
)
# What the test suite needs on top: clang with libFuzzer and the sanitizer
# runtimes, valgrind, the Python test client's protobuf runtime and protoc,
# the Prometheus text parser, openssl for test certificates, headless
# Chromium with a CJK font to render the burden report page, and
# systemd-analyze to check the unit.
GRIDD_TEST_PKGS=(
	clang libclang-rt-14-dev valgrind
	protobuf-compiler python3-protobuf python3-prometheus-client openssl
	chromium fonts-wqy-microhei systemd
)

gridd_say()
{
	printf '%s\n' "$*" >&2
}

gridd_die()
{
	printf 'error: %s\n' "$*" >&2
	exit 1
}

# Runs a command as root: directly when we are root, else through sudo.
gridd_as_root()
{
	if [ "$(id -u)" -eq 0 ]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo "$@"
	else
		gridd_die "need root (or sudo) to run: $*"
	fi
}

# gridd_install PKG... installs the packages that are not installed yet.
# A machine that has them all does no network access at all.
gridd_install()
{
	local missing=() p st
	for p in "$@"; do
		st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null) || st=
		[ "$st" = installed ] || missing+=("$p")
	done
	[ "${#missing[@]}" -eq 0 ] && return 0
	gridd_say "installing: ${missing[*]}"
	gridd_as_root env DEBIAN_FRONTEND=noninteractive \
		apt-get update -q </dev/null
	gridd_as_root env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -q --no-install-recommends "${missing[@]}" \
		</dev/null
}

# gridd_meson_setup DIR COMPILER MESON-ARGS...: configures the build folder
# DIR once, and afresh when the compiler or the arguments change (meson
# cannot switch compilers in place).
gridd_meson_setup()
{
	local dir=$1 compiler=$2 stamp log
	shift 2
	stamp="$compiler $*"
	if [ -f "$dir/build.ninja" ] && [ -f "$dir/.gridd-setup" ] &&
	    [ "$(cat "$dir/.gridd-setup")" = "$stamp" ]; then
		return 0
	fi
	rm -rf "$dir"
	log=$(mktemp)
	if ! CC=$compiler meson setup "$dir" "$@" >"$log" 2>&1; then
		cat "$log" >&2
		rm -f "$log"
		return 1
	fi
	mv "$log" "$dir/setup.log"
	printf '%s\n' "$stamp" >"$dir/.gridd-setup"
}

# The PostgreSQL 15 server binaries (initdb, pg_ctl, postgres, psql).
gridd_pg_bindir()
{
	local d=/usr/lib/postgresql/15/bin
	if [ ! -x "$d/initdb" ] && command -v pg_config >/dev/null 2>&1; then
		d=$(pg_config --bindir)
	fi
	[ -x "$d/initdb" ] || gridd_die "PostgreSQL 15 server binaries not found"
	printf '%s\n' "$d"
}

# A TCP port on 127.0.0.1 that nobody listens on right now.
gridd_free_port()
{
	python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# True when nothing listens on 127.0.0.1:PORT.
gridd_port_free()
{
	python3 - "$1" <<'EOF'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
EOF
}

# PostgreSQL refuses to run as root: as root the cluster belongs to the
# "postgres" system user (created by the postgresql-common package); anyone
# else runs it as themselves.
gridd_pg_user()
{
	if [ "$(id -u)" -eq 0 ]; then
		echo postgres
	else
		id -un
	fi
}

gridd_as_pg()
{
	if [ "$(id -u)" -eq 0 ]; then
		runuser -u postgres -- "$@"
	else
		"$@"
	fi
}

# gridd_pg_init DIR [SOCKDIR]: a new cluster in DIR/data, socket in SOCKDIR
# (default DIR/run; recorded in DIR/sockdir), server log in DIR/log/postgres.log, superuser
# "postgres" with trust authentication (the server listens on loopback and
# on a socket in a private folder only). Settings come from
# GRIDD_PG_SETTINGS (lines for postgresql.conf) when set.
gridd_pg_init()
{
	local dir=$1 sock=${2:-$1/run} bin owner
	bin=$(gridd_pg_bindir)
	owner=$(gridd_pg_user)
	# A unix socket path is limited to 107 bytes, ".s.PGSQL.NNNNN" included.
	[ "${#sock}" -le 90 ] || gridd_die "socket folder path too long: $sock"
	mkdir -p "$dir/data" "$dir/log" "$sock"
	chmod 700 "$dir/data"
	chmod 755 "$sock"
	if [ "$(id -u)" -eq 0 ]; then
		chown "$owner:" "$dir" "$dir/data" "$dir/log" "$sock"
	fi
	gridd_as_pg "$bin/initdb" -D "$dir/data" -U postgres -A trust \
		-E UTF8 --locale=C.UTF-8 ${GRIDD_PG_INITDB_NOSYNC:+--no-sync} \
		>"$dir/log/initdb.log" 2>&1 \
		|| { cat "$dir/log/initdb.log" >&2; gridd_die "initdb failed"; }
	{
		echo
		echo "# written by scripts/lib.sh"
		echo "listen_addresses = '127.0.0.1'"
		echo "max_connections = 300"
		echo "logging_collector = off"
		printf '%s\n' "${GRIDD_PG_SETTINGS:-}"
	} | gridd_as_pg tee -a "$dir/data/postgresql.conf" >/dev/null
	printf '%s\n' "$sock" >"$dir/sockdir"
}

# gridd_pg_start DIR PORT: starts the cluster and waits until it accepts
# connections. The server runs in its own session, so a Ctrl-C meant for
# the script reaches the script, which then stops the server in order.
gridd_pg_start()
{
	local dir=$1 port=$2 bin sock i
	bin=$(gridd_pg_bindir)
	sock=$(cat "$dir/sockdir")
	if [ ! -d "$sock" ]; then
		if [ "$sock" = "$dir/run" ]; then
			mkdir -p "$sock"
		else
			# A socket folder in /tmp was cleaned since the last run:
			# make a new one (a fresh random name, never one that
			# someone else could have made first).
			sock=$(mktemp -d /tmp/gridd-pg.XXXXXX)
			chmod 755 "$sock"
			printf '%s\n' "$sock" >"$dir/sockdir"
		fi
		[ "$(id -u)" -ne 0 ] || chown "$(gridd_pg_user):" "$sock"
	fi
	case $sock in *"'"*) gridd_die "a quote in the socket path: $sock" ;; esac
	gridd_as_pg setsid -w "$bin/pg_ctl" -D "$dir/data" \
		-l "$dir/log/postgres.log" -o "-p $port -k '$sock'" -w -t 60 start \
		>/dev/null 2>&1 || {
		tail -n 20 "$dir/log/postgres.log" >&2 || true
		return 1
	}
	for i in $(seq 1 100); do
		"$bin/pg_isready" -q -h "$sock" -p "$port" && return 0
		sleep 0.1
	done
	gridd_say "PostgreSQL did not become ready"
	return 1
}

# The postmaster's pid from DIR/data/postmaster.pid, if that process is a
# live postgres (a stale file after a crash names a pid that may since
# have been reused by another program).
gridd_pg_pid()
{
	local dir=$1 pid
	[ -r "$dir/data/postmaster.pid" ] || return 1
	pid=$(head -n 1 "$dir/data/postmaster.pid" 2>/dev/null) || return 1
	case $pid in '' | *[!0-9]*) return 1 ;; esac
	kill -0 "$pid" 2>/dev/null || return 1
	grep -q postgres "/proc/$pid/cmdline" 2>/dev/null || return 1
	printf '%s\n' "$pid"
}

# gridd_pg_stop DIR: fast shutdown by pid (SIGINT), then immediate
# (SIGQUIT), then SIGKILL if the server does not go away.
gridd_pg_stop()
{
	local dir=$1 pid i
	pid=$(gridd_pg_pid "$dir") || return 0
	kill -INT "$pid" 2>/dev/null || true
	for i in $(seq 1 300); do
		kill -0 "$pid" 2>/dev/null || return 0
		[ "$i" -eq 200 ] && kill -QUIT "$pid" 2>/dev/null
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
}

# gridd_psql SOCKDIR PORT DB ARGS...: psql as the cluster's superuser.
gridd_psql()
{
	local sock=$1 port=$2 db=$3
	shift 3
	"$(gridd_pg_bindir)/psql" -X -q -v ON_ERROR_STOP=1 -h "$sock" \
		-p "$port" -U postgres -d "$db" "$@"
}

# The Liechtenstein sample shipped with the project, or the copy beside
# the project checkout.
gridd_sample_dir()
{
	local d
	for d in "$GRIDD_ROOT/data/liechtenstein" "$GRIDD_ROOT/data" \
	    "$GRIDD_ROOT/../shared/data/liechtenstein"; do
		if [ -e "$d/municipalities.geojson" ] ||
		    [ -e "$d/municipalities.geojson.gz" ] ||
		    [ -e "$d/municipalities.geojson.xz" ]; then
			(cd "$d" && pwd)
			return 0
		fi
	done
	return 1
}

# gridd_sample_unpack SRC DEST: DEST gets SRC's files uncompressed (the
# project ships the sample compressed with xz). Files already unpacked and
# newer than their source are kept.
gridd_sample_unpack()
{
	local src=$1 dest=$2 f base out
	mkdir -p "$dest"
	for f in "$src"/*; do
		[ -f "$f" ] || continue
		base=$(basename "$f")
		out=$dest/${base%.[gx]z}
		[ "$out" -nt "$f" ] && continue
		case $f in
		*.xz) xz -dc "$f" >"$out.tmp" ;;
		*.gz) gzip -dc "$f" >"$out.tmp" ;;
		*) cp "$f" "$out.tmp" ;;
		esac
		mv "$out.tmp" "$out"
	done
}
