# shellcheck shell=bash
# Helpers shared by benches/run-cow, benches/run-podman and benches/run-store (sourced, not run).
#
# - timing in ms from $EPOCHREALTIME, medians, ratios;
# - mounts: every mount is recorded and unmounted at exit (EXIT/INT/TERM/HUP trap), and whatever
#   is still mounted under the work dir is swept as well;
# - noise: before each measurement phase, wait until no `fio` runs (benches/run of the other
#   runner), record the load average and count cache drops made by other processes.

export LC_ALL=C
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT_DIR=$REPO/benches/out
PY=/usr/bin/python3

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

need_root() { [[ $(id -u) == 0 ]] || die "$1 needs root (mounts, drop_caches)"; }

# need_tools TOOL:PACKAGE...: dies naming the Debian packages of the missing tools.
need_tools() {
    local t missing=()
    for t in "$@"; do
        command -v "${t%%:*}" >/dev/null || missing+=("${t%%:*} (apt-get install ${t#*:})")
    done
    ((${#missing[@]} == 0)) || die "missing: ${missing[*]}"
}

# ---- time and statistics -------------------------------------------------------------------

# Runs "$@"; sets LAST_MS to its wall time in ms; returns its status.
time_ms() {
    local t0=$EPOCHREALTIME rc=0
    "$@" || rc=$?
    local t1=$EPOCHREALTIME
    LAST_MS=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", (b - a) * 1000 }')
    return $rc
}

median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 }
        END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2];
              else printf "%.4f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# ratio A B: A / B with 2 decimals, "—" when either is missing or B is 0.
ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || a == "nan" || b == "nan" || b + 0 == 0) print "—";
        else printf "%.2f\n", a / b }'
}

# fmt VALUE DECIMALS: thousands separators.
fmt() {
    [[ -z $1 || $1 == nan ]] && {
        echo "—"
        return
    }
    awk -v v="$1" -v d="${2:-0}" 'BEGIN {
        s = sprintf("%." d "f", v); neg = (s ~ /^-/); sub(/^-/, "", s)
        i = s; f = ""; if (index(s, ".")) { i = substr(s, 1, index(s, ".") - 1); f = substr(s, index(s, ".")) }
        o = ""; while (length(i) > 3) { o = "," substr(i, length(i) - 2) o; i = substr(i, 1, length(i) - 3) }
        print (neg ? "-" : "") i o f }'
}

# ---- caches and noise ----------------------------------------------------------------------

OWN_DROPS=0
vm_drops() { awk '$1 == "drop_pagecache" { print $2 }' /proc/vmstat; }
drop_caches() {
    sync
    echo 3 >/proc/sys/vm/drop_caches
    OWN_DROPS=$((OWN_DROPS + 1))
}

# Reads files into the page cache (binaries about to run, the image under test).
warm() {
    local f
    for f in "$@"; do [[ -e $f ]] && cat -- "$f" >/dev/null; done
    return 0
}

# Binaries and the shared libraries they load, for warm() after drop_caches.
bin_files() {
    local b p
    for b in "$@"; do
        p=$(command -v "$b") || continue
        p=$(readlink -f "$p")
        echo "$p"
        ldd "$p" 2>/dev/null | awk '$(NF - 1) ~ /^\// { print $(NF - 1) } $1 ~ /^\// { print $1 }'
    done | sort -u
}

# Foreign cache drops: call window_open before a sample and window_foreign after it.
window_open() {
    WIN_VM=$(vm_drops)
    WIN_OWN=$OWN_DROPS
}
window_foreign() { echo $(($(vm_drops) - WIN_VM - (OWN_DROPS - WIN_OWN))); }

NOISE=()          # lines for the report's noise section
FOREIGN_TOTAL=0   # cache drops by other processes during samples
FIO_WAITED=0      # seconds spent waiting for another runner's fio
LOADS=()          # 1-min load average at the start of each phase

# phase NAME: waits while another runner's fio is running (at most FIO_WAIT_MAX s), then records
# the load average. Our own fio never runs at a phase boundary, so every fio seen here is foreign.
phase() {
    local waited=0 max=${FIO_WAIT_MAX:-1800} pids
    while pids=$(pgrep -x fio); do
        ((waited == 0)) && log "phase $1: waiting for another runner's fio (pid $(echo $pids)) to finish"
        sleep 5
        waited=$((waited + 5))
        if ((waited >= max)); then
            NOISE+=("phase $1 started while another runner's fio was still running (gave up after ${max} s)")
            break
        fi
    done
    FIO_WAITED=$((FIO_WAITED + waited))
    local l
    l=$(cut -d' ' -f1 /proc/loadavg)
    LOADS+=("$1 $l")
    log "phase $1 (load $l)"
}

# Top CPU users other than us, for the report.
busy_now() {
    ps -eo pcpu=,comm= --sort=-pcpu | awk -v me="$$" '$1 > 5 { printf "%s%s %s%%", (n++ ? ", " : ""), $2, $1 } END { if (!n) print "none"; else print "" }'
}

# The noise paragraph of a report.
noise_report() {
    local l loads="" hi=0
    for l in "${LOADS[@]}"; do
        loads+="${loads:+, }${l% *} ${l##* }"
        awk -v x="${l##* }" 'BEGIN { exit !(x > 1.0) }' && hi=1
    done
    echo "- noise: load average (1 min) at the start of each phase: ${loads}; busy processes at the start: $BUSY_START; at the end: $(busy_now)"
    echo "- priority: nice ${BENCH_NICE:-0} for the runner and everything it starts (other sessions' jobs run at 0)"
    echo "- cache drops by other processes during samples: $FOREIGN_TOTAL (samples re-measured up to ${RETRIES:-2}× first); waited ${FIO_WAITED} s for another runner's fio"
    ((hi)) && echo "- **the machine was not idle (load > 1 on 2 CPUs): absolute numbers are noisy, ratios less so**"
    for l in "${NOISE[@]}"; do echo "- $l"; done
}

# ---- mounts and cleanup --------------------------------------------------------------------

MOUNTS=()   # mount points we made, unmounted newest first
BG_PIDS=()  # background processes we started
WORK=""     # the run's work dir: anything still mounted under it is unmounted at exit

track_mount() { MOUNTS+=("$1"); }

is_mounted() { mountpoint -q -- "$1" 2>/dev/null; }

# umount_wait MP [DAEMON_PID]: unmounts (lazily if busy), then waits up to 5 s for the daemon.
umount_wait() {
    local mp=$1 pid=${2:-} i
    if is_mounted "$mp"; then
        umount -- "$mp" 2>/dev/null || umount -l -- "$mp" 2>/dev/null || true
    fi
    if [[ -n $pid ]]; then
        for ((i = 0; i < 500; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.01
        done
    fi
}

# Mount points under DIR, deepest first (octal escapes of mountinfo decoded).
mounts_under() {
    awk -v d="$1/" '{ p = $5; gsub(/\\040/, " ", p); if (index(p "/", d) == 1) print length(p) "\t" p }' \
        /proc/self/mountinfo | sort -rn | cut -f2-
}

unmount_all() {
    local i mp
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        umount_wait "${MOUNTS[i]}"
    done
    MOUNTS=()
    if [[ -n $WORK && -d $WORK ]]; then
        while IFS= read -r mp; do
            [[ -n $mp ]] || continue
            umount -- "$mp" 2>/dev/null || umount -l -- "$mp" 2>/dev/null || true
        done < <(mounts_under "$WORK")
    fi
}

# A script's cleanup hook (defined there) runs first, then every mount goes.
cleanup() {
    local rc=$?
    trap '' INT TERM HUP
    if declare -F script_cleanup >/dev/null; then script_cleanup || true; fi
    local p
    for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    unmount_all
    exit $rc
}

# Runs the benchmark (and every process it starts: fio, mounts, daemons, podman) at nice
# BENCH_NICE (default -10), so compile jobs of other sessions at nice 0 yield the CPUs to it.
# Kernel threads (loop workers, writeback) keep their own priority.
bench_priority() {
    BENCH_NICE=${BENCH_NICE:--10}
    renice -n "$BENCH_NICE" -p $$ >/dev/null || NOISE+=("renice to $BENCH_NICE failed: ran at nice 0")
}

install_traps() {
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    trap 'exit 129' HUP
}

# The parallaxfs binary a bench measures: $PARALLAXFS, else the installed form, the statically
# linked build (scripts/build-static: rebuilt when the sources changed, a no-op otherwise).
pfs_binary() {
    if [[ -n ${PARALLAXFS:-} ]]; then
        echo "$PARALLAXFS"
    else
        "$REPO/scripts/build-static" || die "scripts/build-static failed"
    fi
}

# Copies a binary into WORK/bin so a cargo build during the run cannot swap it; prints the path.
private_copy() {
    local src=$1 dst=$WORK/bin/$(basename "$1")
    [[ -x $src ]] || die "$src missing (PARALLAXFS, or scripts/build-static)"
    mkdir -p "$WORK/bin"
    cp -fp "$src" "$dst.tmp" && mv -f "$dst.tmp" "$dst"
    echo "$dst"
}

# What a private copy is: the build time of the binary it was copied from and its hash (the
# shared target/ is rebuilt by other sessions, so HEAD alone does not name it).
bin_info() {
    echo "binary built $(date -u -r "$1" '+%Y-%m-%d %H:%M UTC'), sha256 $(sha256sum "$1" | cut -c1-12)"
}

git_rev() {
    local rev dirty
    rev=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')
    dirty=$(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null)
    echo "tree at git $rev${dirty:+ + local changes}"
}

# Header lines common to every report.
report_header() {
    local title=$1 cmd=$2 started=$3
    echo "### $title"
    echo
    echo "- date: $started; $(uname -sr), $(nproc) CPUs, $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
    echo "- command: \`$cmd\`"
}

# Writes a report to stdout and to benches/out/NAME-latest.md plus a dated copy.
emit_report() {
    local name=$1 file=$2 stamp
    stamp=$(date +%Y%m%d-%H%M%S)
    mkdir -p "$OUT_DIR"
    cat "$file"
    cp "$file" "$OUT_DIR/$name-latest.md"
    cp "$file" "$OUT_DIR/$name-$stamp.md"
    log "wrote benches/out/$name-latest.md"
}

# ---- Podman (isolated store, as tests/podman.rs) ---------------------------------------------

PODMAN_RUN_FLAGS=(--runtime runc --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 --network none)

# podman_env DIR: writes DIR/{containers,registries}.conf shared by every store of a run.
podman_conf() {
    local dir=$1
    mkdir -p "$dir/tmp"
    cat >"$dir/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
netns = "none"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$dir/events.log"
tmp_dir = "$dir/tmp"
EOF
    printf 'unqualified-search-registries = []\n' >"$dir/registries.conf"
}

# storage_conf FILE GRAPHROOT RUNROOT [MOUNT_PROGRAM [ADDITIONAL_STORE]]
storage_conf() {
    local f=$1 graph=$2 run=$3 mp=${4:-} ais=${5:-}
    {
        printf '[storage]\ndriver = "overlay"\ngraphroot = "%s"\nrunroot = "%s"\n' "$graph" "$run"
        if [[ -n $ais ]]; then printf '[storage.options]\nadditionalimagestores = ["%s"]\n' "$ais"; fi
        printf '[storage.options.overlay]\nmountopt = "nodev"\n'
        if [[ -n $mp ]]; then printf 'mount_program = "%s"\n' "$mp"; fi
    } >"$f"
}

# pod CONFDIR STORAGE_CONF ARGS...: podman with the isolated configuration.
pod() {
    local dir=$1 sc=$2
    shift 2
    CONTAINERS_CONF=$dir/containers.conf CONTAINERS_STORAGE_CONF=$sc \
        CONTAINERS_REGISTRIES_CONF=$dir/registries.conf TMPDIR=$dir/tmp podman "$@"
}

# import_busybox CONFDIR STORAGE_CONF NAME: a busybox-static rootfs with every applet linked.
import_busybox() {
    local dir=$1 sc=$2 name=$3 root=$1/rootfs a
    rm -rf "$root"
    mkdir -p "$root"/{bin,etc,tmp,root,var/tmp}
    cp /bin/busybox "$root/bin/busybox"
    for a in $(/bin/busybox --list); do
        [[ $a == busybox ]] || ln -sf busybox "$root/bin/$a"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
    printf 'root:x:0:\n' >"$root/etc/group"
    printf 'hello\n' >"$root/etc/motd"
    tar -C "$root" -cf "$dir/rootfs.tar" .
    pod "$dir" "$sc" import --change 'CMD=["/bin/sh"]' --change 'ENV=PATH=/bin' "$dir/rootfs.tar" "$name" >/dev/null
    rm -rf "$root" "$dir/rootfs.tar"
}

# gen_tree DIR NFILES NDIRS MINKB MAXKB SEED: seeded pseudo-text files dealt round-robin into
# NDIRS directories DIR/dNNNN.
gen_tree() {
    "$PY" - "$@" <<'EOF'
import os, random, sys
d, n, nd, lo, hi, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
rng = random.Random(seed)
words = [''.join(rng.choice('abcdefghijklmnopqrstuvwxyz') for _ in range(rng.randint(2, 10))) for _ in range(4000)]
text = ' '.join(rng.choices(words, weights=[1 / (i + 1) for i in range(4000)], k=400000)).encode()
for j in range(nd):
    os.makedirs(f"{d}/d{j:04d}", exist_ok=True)
for i in range(n):
    size = rng.randint(lo * 1024, hi * 1024)
    off = rng.randrange(0, len(text) - size)
    with open(f"{d}/d{i % nd:04d}/f{i:06d}", "wb") as f:
        f.write(text[off:off + size])
EOF
}

# gen_big FILE MB SEED: alternating 32 KiB of random bytes and 32 KiB of pseudo-text.
gen_big() {
    "$PY" - "$@" <<'EOF'
import random, sys
path, mb, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
words = [''.join(rng.choice('abcdefghijklmnopqrstuvwxyz') for _ in range(rng.randint(2, 10))) for _ in range(4000)]
text = ' '.join(rng.choices(words, weights=[1 / (i + 1) for i in range(4000)], k=200000)).encode()
chunk = 32768
with open(path, "wb") as f:
    for i in range(mb * 1024 * 1024 // chunk):
        if i % 2:
            off = rng.randrange(0, len(text) - chunk)
            f.write(text[off:off + chunk])
        else:
            f.write(rng.randbytes(chunk))
EOF
}

# peak_rss PID OUTFILE: samples the process tree under PID every 0.2 s until PID exits; writes
# "max_sum_rss_kib", then "comm max_vmhwm_kib" per command (largest over its processes).
peak_rss_sampler() {
    "$PY" - "$@" <<'EOF'
import os, sys, time
root, out = int(sys.argv[1]), sys.argv[2]
hwm, peak_sum = {}, 0
def tree():
    kids = {}
    for p in os.listdir('/proc'):
        if p.isdigit():
            try:
                with open(f'/proc/{p}/stat') as f:
                    s = f.read()
                ppid = int(s[s.rindex(')') + 2:].split()[1])
                kids.setdefault(ppid, []).append(int(p))
            except (OSError, ValueError):
                pass
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out
while os.path.exists(f'/proc/{root}'):
    total = 0
    for p in tree():
        try:
            with open(f'/proc/{p}/status') as f:
                st = dict(l.split(':', 1) for l in f if ':' in l)
            if 'VmHWM' not in st:
                continue
            comm = st['Name'].strip()
            h, r = int(st['VmHWM'].split()[0]), int(st['VmRSS'].split()[0])
            key = (p, comm)
            hwm[key] = max(hwm.get(key, 0), h)
            total += r
        except (OSError, ValueError):
            pass
    peak_sum = max(peak_sum, total)
    time.sleep(0.2)
by_comm = {}
for (p, comm), h in hwm.items():
    by_comm[comm] = max(by_comm.get(comm, 0), h)
with open(out, 'w') as f:
    f.write(f"{peak_sum}\n")
    for comm, h in sorted(by_comm.items(), key=lambda x: -x[1]):
        f.write(f"{comm} {h}\n")
EOF
}
