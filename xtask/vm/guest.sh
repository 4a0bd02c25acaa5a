#!/bin/sh
# Runs inside a `cargo xtask vmtest` VM (virtme-ng over the host's root, which
# is read-only here; /etc /usr /var /tmp are throw-away overlays).
#
# $1 is the run directory, the only one shared writable with the host
# (--rwdir). xtask writes there before boot:
#   env.sh      KERNEL_SERIES=... SUITE_TIMEOUT=<seconds> TEST_THREADS=<n>
#   suites.txt  one "<suite> <absolute path of the test binary>" a line
#   binds.txt   one "<snapshot> <build path>" a line, for the agent binary
#   <suite>.env optional: VAR=value lines set for that suite only
# and this script writes back, per suite: <suite>.start (empty, when it
# starts), <suite>.log (stdout and stderr), <suite>.rc (exit code; 124 means
# the suite timed out), plus guest.log and, last, done.
# The console does not reach the host reliably: everything goes to files.

OUT=$1
if [ -z "$OUT" ] || [ ! -d "$OUT" ]; then
    echo "usage: guest.sh RUN_DIR" >&2
    exit 2
fi
exec >"$OUT/guest.log" 2>&1 </dev/null
: >"$OUT/started"
# shellcheck source=/dev/null
. "$OUT/env.sh"

echo "kernel: $(uname -r) (series $KERNEL_SERIES), $(nproc) CPUs"

# virtme-ng mounts debugfs and tracefs itself today; bpffs it does not.
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf || echo "env: cannot mount bpffs"
mountpoint -q /sys/kernel/debug || mount -t debugfs debugfs /sys/kernel/debug || echo "env: cannot mount debugfs"
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing || echo "env: cannot mount tracefs"

# Debian builds these as modules. Absent ones are reported, not fatal: a
# test that needs one fails or skips and says so. (clsact lives in
# sch_ingress; nft's inet reject in nft_reject_inet.)
# One modprobe for all (each process costs ~0.7 s under emulation); only if
# that fails, one each to name the missing.
MODULES="veth dummy bridge 8021q bonding macvlan vxlan wireguard tun ifb
    sch_ingress cls_bpf act_bpf nf_tables nft_reject_inet nft_ct nf_conntrack"
t0=$(date +%s)
# shellcheck disable=SC2086
if ! modprobe -qa $MODULES; then
    for m in $MODULES; do
        modprobe -q "$m" || echo "env: module $m: not available"
    done
fi
echo "modules loaded in $(($(date +%s) - t0)) s"

# Tools the tests call. They come from the host's root, so a missing one is
# missing on the host too.
for t in ip tc ethtool nft mountpoint setpriv timeout; do
    command -v "$t" >/dev/null || echo "env: tool $t: not found"
done

# The agent binaries the tests run by their build path, replaced by the
# snapshots xtask took (a host rebuild during the run must not swap them).
while read -r snap orig; do
    [ -n "$snap" ] || continue
    mount --bind "$snap" "$orig" || echo "env: cannot bind $snap over $orig"
done <"$OUT/binds.txt"

# Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK.
ulimit -l unlimited 2>/dev/null || echo "env: cannot raise RLIMIT_MEMLOCK ($(ulimit -l))"

export FLOWLOG_REQUIRE_ROOT_TESTS=1
export FLOWLOG_KERNEL_UNDER_TEST="$KERNEL_SERIES"
export RUST_BACKTRACE=1
# /tmp is an overlay over the host's /tmp: start from an empty directory so
# files the host left there cannot leak into the tests.
# Mode 1777 like /tmp: some tests run the agent as nobody.
TMPDIR=$(mktemp -d /tmp/flowlog-vmtest.XXXXXX) && chmod 1777 "$TMPDIR" && export TMPDIR

while read -r suite exe filters; do
    [ -n "$suite" ] || continue
    echo "suite $suite: $exe"
    : >"$OUT/$suite.start"
    # --nocapture, one file for both streams: each test's output lands under
    # its name as it runs (SKIP: lines of passing tests included), and a
    # suite killed by timeout still shows where it hung. -k: SIGKILL if
    # SIGTERM is not enough.
    # $filters: test names to run (the kernel's plan), split on purpose.
    # <suite>.env: variables of this suite only (the packaged binary's run).
    # shellcheck disable=SC2086
    (
        if [ -f "$OUT/$suite.env" ]; then
            set -a
            # shellcheck source=/dev/null
            . "$OUT/$suite.env"
            set +a
        fi
        exec timeout -k 10 "$SUITE_TIMEOUT" "$exe" --test-threads="$TEST_THREADS" --nocapture $filters
    ) >"$OUT/$suite.log" 2>&1 </dev/null
    rc=$?
    echo "suite $suite: exit $rc"
    echo "$rc" >"$OUT/$suite.rc"
    # A test that died mid-way may leave namespaces behind; the next suite
    # should not trip over them.
    for ns in $(ip netns list 2>/dev/null | cut -d' ' -f1); do
        ip netns del "$ns" 2>/dev/null
    done
done <"$OUT/suites.txt"

: >"$OUT/done"
