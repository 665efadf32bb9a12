#!/usr/bin/env bash
# A Debian 12 guest under QEMU for what this machine's kernel lacks: kernel TLS (tls.ko) and a
# real verbs stack (soft-RoCE, rdma_rxe). Software emulation (TCG): slow, but the real kernel code.
#   Tools/vm.sh build          installs qemu and debootstrap, makes the guest's image (~4 min, once)
#                              in a cache outside the clone, so a fresh clone reuses it:
#                              $SHOAL_VM_CACHE, default ~/.cache/shoal/vm
#   Tools/vm.sh run SCRIPT     boots the guest, runs SCRIPT (a path inside the repository) as root
#                              with the repository mounted at /repo, prints its output, and exits
#                              with its status
# In the guest: modules for rdma_rxe, ib_uverbs, rdma_ucm and tls are loaded, eth0 is up at
# 10.0.2.15 (QEMU's user network, restricted: no way out), and `rdma link add rxe0 type rxe
# netdev eth0` has been run. Binaries built on this machine run there (same Debian release);
# build Swift ones with `--static-swift-stdlib`.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
vm="$root/.shoal/vm"  # the job's output and the console log
cache="${SHOAL_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/shoal/vm}"  # the image and the guest's tree
cmd="${1:-}"

build() {
    local packages=(qemu-system-x86 qemu-utils debootstrap)
    local missing=()
    for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    [ -f "$cache/root.img" ] && { echo "vm: $cache/root.img exists (delete it to rebuild)"; return 0; }
    # The Debian mirror apt already uses on this machine.
    local mirror
    mirror=$(grep -rhoE '(URIs:|^deb)[[:space:]]+[a-z]+://[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
             | awk '{print $2}' | grep -m1 -E '/debian/?$' || true)
    [ -n "$mirror" ] || { echo "vm: no Debian mirror found in apt's sources" >&2; exit 1; }
    mkdir -p "$cache"
    rm -rf "$cache/root"
    local include=linux-image-amd64,kmod,udev,procps,iproute2,rdma-core,ibverbs-utils,rdmacm-utils,perftest
    # What a Shoal binary links besides glibc.
    include+=,libcurl4,liburing2,libnuma1,libibverbs1,librdmacm1,libssl3,libstdc++6,openssl
    debootstrap --variant=minbase --include="$include" bookworm "$cache/root" "$mirror" > "$cache/debootstrap.log" 2>&1 \
        || { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
    cat > "$cache/root/shoal-init.sh" <<'INIT'
#!/bin/sh
# PID 1 of the guest: mount what is missing, bring up eth0 and the kernel modules, run the job.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sys /sys
mountpoint -q /dev || mount -t devtmpfs dev /dev
mkdir -p /dev/pts /tmp && mount -t devpts devpts /dev/pts && mount -t tmpfs tmpfs /tmp
modprobe 9pnet_virtio; modprobe 9p
mkdir -p /repo && mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 host /repo
ip link set lo up; ip link set eth0 up; ip addr add 10.0.2.15/24 dev eth0
for m in rdma_rxe ib_uverbs rdma_ucm tls; do modprobe $m; done
rdma link add rxe0 type rxe netdev eth0 2>/dev/null
job=$(cat /proc/cmdline | sed -n 's/.*shoal.job=\([^ ]*\).*/\1/p')
( cd /repo && sh "$job" ) > /repo/.shoal/vm/job.out 2>&1
echo $? > /repo/.shoal/vm/job.rc
sync
echo o > /proc/sysrq-trigger
INIT
    chmod 755 "$cache/root/shoal-init.sh"
    rm -f "$cache/root.img"
    truncate -s 2G "$cache/root.img"
    mkfs.ext4 -q -F -d "$cache/root" "$cache/root.img"
    echo "vm: built $cache/root.img"
}

run() {
    local job="${1:-}"
    [ -n "$job" ] && [ -f "$root/$job" ] || { echo "usage: $0 run SCRIPT (a file inside the repository)" >&2; exit 2; }
    [ -f "$cache/root.img" ] || { echo "vm: no image; run '$0 build' first" >&2; exit 1; }
    local kernel initrd
    kernel=$(ls "$cache"/root/boot/vmlinuz-* | head -1)
    initrd=$(ls "$cache"/root/boot/initrd.img-* | head -1)
    mkdir -p "$vm"
    rm -f "$vm/job.out" "$vm/job.rc"
    # /dev/kvm here is paravirtual and does not boot a stock kernel: software emulation only.
    timeout "${SHOAL_VM_TIMEOUT:-900}" qemu-system-x86_64 -accel tcg,thread=multi,tb-size=256 -cpu max -smp 2 -m 2048 \
        -kernel "$kernel" -initrd "$initrd" \
        -append "root=/dev/vda rw console=ttyS0 init=/shoal-init.sh panic=-1 net.ifnames=0 quiet shoal.job=$job" \
        -drive file="$cache/root.img",format=raw,if=virtio,snapshot=on \
        -netdev user,id=n0,restrict=on -device virtio-net-pci,netdev=n0 \
        -virtfs local,path="$root",mount_tag=host,security_model=none \
        -nographic -no-reboot > "$vm/console.log" 2>&1 || true
    [ -f "$vm/job.rc" ] || { echo "vm: the job did not finish; console:" >&2; tail -30 "$vm/console.log" >&2; exit 1; }
    cat "$vm/job.out"
    return "$(cat "$vm/job.rc")"
}

case "$cmd" in
build) build ;;
run) shift; run "$@" ;;
*) echo "usage: $0 build | run SCRIPT" >&2; exit 2 ;;
esac
