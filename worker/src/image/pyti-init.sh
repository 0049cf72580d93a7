#!/bin/sh
# PID 1 of a PyTI guest: mount the IO disk, run the agent (or the self-test), always power off.
# Installed as /usr/local/sbin/pyti-init and started with init=/usr/local/sbin/pyti-init.
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
HOME=/root
LANG=C.UTF-8
export PATH HOME LANG

say() { echo "pyti-init: $*" > /dev/console; }

power_off() {
    sync
    umount /io 2>/dev/null
    sync
    say "powering off"
    echo o > /proc/sysrq-trigger
    sleep 30
    # Still here: returning from PID 1 panics the kernel, and panic=-1 ends the VM.
    exit 1
}

mount -t proc proc /proc 2>/dev/null
mount -t sysfs sysfs /sys 2>/dev/null
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
hostname pyti-guest 2>/dev/null
# Loopback only (there is no network card): a package's attempts to reach the network
# then fail the way they would offline, and DNS queries are visible to the monitor.
ip link set lo up 2>/dev/null || busybox ip link set lo up 2>/dev/null

io_device=/dev/vdb
selftest=0
# pyti.agent=PATH runs another program as the agent (to check an image's error path).
agent=/usr/local/bin/pyti-guest
for word in $(cat /proc/cmdline); do
    case "$word" in
        pyti.io=*) io_device="${word#pyti.io=}" ;;
        pyti.selftest=1) selftest=1 ;;
        pyti.agent=*) agent="${word#pyti.agent=}" ;;
    esac
done

mkdir -p /io
chmod 700 /io
modprobe -qa vfat nls_cp437 nls_utf8 nls_ascii
# Root's alone: package code runs as another user and must not read the job's nonce or
# write results.
if ! mount -t vfat -o rw,noatime,iocharset=utf8,uid=0,gid=0,umask=077 "$io_device" /io; then
    say "cannot mount the IO disk $io_device"
    power_off
fi
mkdir -p /io/results

now() { date -u +%Y-%m-%dT%H:%M:%SZ; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }

if [ "$selftest" = 1 ]; then
    python_version=$(python3 -c 'import platform; print(platform.python_version())' 2>&1)
    venv_python=$(/opt/pyti/venv/bin/python -c 'import sys; print(sys.prefix)' 2>&1)
    printf '{"kind":"selftest","kernel_release":"%s","python_version":"%s","venv":"/opt/pyti/venv","venv_prefix":"%s","date":"%s","uptime_s":%s}\n' \
        "$(uname -r)" "$python_version" "$venv_python" "$(now)" "$(uptime_s)" > /io/results/selftest.json
    say "self-test written"
    power_off
fi

say "starting agent"
"$agent" run --io /io > /dev/console 2>&1
status=$?
say "agent exited with status $status"
if [ ! -f /io/results/results.json ]; then
    printf '{"kind":"agent-error","exit_status":%s,"error":"agent exited with status %s without writing results/results.json","kernel_release":"%s","date":"%s","uptime_s":%s}\n' \
        "$status" "$status" "$(uname -r)" "$(now)" "$(uptime_s)" > /io/results/agent-error.json
fi
power_off
