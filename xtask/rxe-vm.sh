#!/bin/bash
# rxe-vm.sh (from shared/recipes/run-in-rxe-vm.sh, owned by `cargo xtask rxe-test`) - run a command inside a throw-away QEMU guest whose kernel has
# soft-RoCE (rdma_rxe) loaded and an rxe device ("rxe0") already created.
#
#   usage: run-in-rxe-vm.sh [--] CMD [ARGS...]
#          run-in-rxe-vm.sh --install-only      # just install packages + prepare kernel/initramfs
#
# The guest sees the host's whole filesystem read-only through 9p, with a tmpfs
# overlay on top (writes inside the guest are thrown away), so binaries built on the
# host (cargo test --no-run, target/...) run unchanged; CMD runs as root in the same
# working directory with the same environment. The guest's exit status is returned.
# Works as a cargo runner:
#   CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="/path/run-in-rxe-vm.sh" cargo test
#
# Knobs (environment):
#   RXE_VM_ACCEL    auto|tcg|kvm  (auto: kvm only when /dev/kvm is usable and is not PVM)
#   RXE_VM_CPUS     guest vCPUs (default: nproc)
#   RXE_VM_MEM      guest memory (default: 2G)
#   RXE_VM_TIMEOUT  seconds before the VM is killed (default: 1800)
#   RXE_NETDEV      lo (default), dummy, none, or a netdev name: what rxe0 is bound to
#   RXE_VM_CACHE    where kernel + initramfs are cached (default: /var/cache/rxe-vm)
#   RXE_VM_KERNEL_PKG  Debian kernel package (default: what linux-image-amd64 depends on)
#   RXE_VM_BOOTIMG  kernel image to boot (default: the cached vmlinux, else vmlinuz)
#   RXE_VM_VERBOSE  1: show the guest kernel's boot log and boot-step timings
#   RXE_VM_NO_APT   1: never run apt-get
#
# Exit status: CMD's; 120 = `rdma link add` failed in the guest, 121 = cd failed,
# 124 = no status came back (timeout or guest crash), 2 = setup problem on the host.
# The cache keeps the first kernel it downloaded; delete $RXE_VM_CACHE to take a newer one.
# Only guest-internal traffic: the VM has no NIC (-nic none); rxe0 sits on the guest's lo.
set -euo pipefail

CACHE=${RXE_VM_CACHE:-/var/cache/rxe-vm}
MEM=${RXE_VM_MEM:-2G}
CPUS=${RXE_VM_CPUS:-$(nproc)}
TIMEOUT=${RXE_VM_TIMEOUT:-1800}
NETDEV=${RXE_NETDEV:-lo}
ACCEL=${RXE_VM_ACCEL:-auto}
log() { echo "[rxe-vm $(date +%T)] $*" >&2; }

# ---------------------------------------------------------------- 1. host packages
need_pkgs=()
command -v qemu-system-x86_64 >/dev/null || need_pkgs+=(qemu-system-x86)
dpkg -s busybox-static >/dev/null 2>&1 || need_pkgs+=(busybox-static)   # static: it goes into the initramfs
# guest userspace = host userspace: verbs library, rxe provider, `rdma` tool
[ -e /usr/lib/x86_64-linux-gnu/libibverbs.so.1 ] || need_pkgs+=(libibverbs1)
ls /usr/lib/x86_64-linux-gnu/libibverbs/librxe-rdmav*.so >/dev/null 2>&1 || need_pkgs+=(ibverbs-providers)
command -v rdma >/dev/null || need_pkgs+=(iproute2)
command -v depmod >/dev/null || need_pkgs+=(kmod)          # depmod here, modprobe in the guest
if [ ${#need_pkgs[@]} -gt 0 ]; then
    [ "${RXE_VM_NO_APT:-0}" = 1 ] && { log "missing packages: ${need_pkgs[*]}"; exit 2; }
    log "apt-get install ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 -qq update >&2
    apt-get -o DPkg::Lock::Timeout=600 -y -qq install --no-install-recommends "${need_pkgs[@]}" >&2
fi

# ---------------------------------------------------------------- 2. guest kernel
# A Debian kernel package, unpacked (not installed) into the cache: vmlinuz + modules.
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"; flock 9
KPKG=${RXE_VM_KERNEL_PKG:-}
if [ -z "$KPKG" ]; then
    KPKG=$(ls -d "$CACHE"/linux-image-*-amd64 2>/dev/null | sort -V | tail -1 | xargs -r basename || true)
fi
if [ -z "$KPKG" ] || [ ! -d "$CACHE/$KPKG/boot" ]; then
    [ "${RXE_VM_NO_APT:-0}" = 1 ] && { log "no cached kernel in $CACHE"; exit 2; }
    if [ -z "$KPKG" ]; then
        KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}')
        if [ -z "$KPKG" ]; then
            apt-get -o DPkg::Lock::Timeout=600 -qq update >&2
            KPKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
        fi
    fi
    log "downloading + unpacking $KPKG"
    tmpd=$(mktemp -d "$CACHE/dl.XXXXXX")
    (cd "$tmpd" && apt-get download "$KPKG" 2>&1 | grep -v 'Download is performed unsandboxed') >&2 || true
    deb=$(ls "$tmpd"/*.deb 2>/dev/null) || { log "apt-get download $KPKG failed"; exit 2; }
    dpkg-deb -x "$deb" "$tmpd/root"
    kv=$(ls "$tmpd/root/lib/modules/")
    depmod -b "$tmpd/root" "$kv"    # modules.dep, so that the guest can modprobe / autoload
    rm -rf "${CACHE:?}/$KPKG"; mv "$tmpd/root" "$CACHE/$KPKG"; rm -rf "$tmpd"
fi
KDIR=$CACHE/$KPKG
VMLINUZ=$(ls "$KDIR"/boot/vmlinuz-* | head -1)
KVER=${VMLINUZ##*/vmlinuz-}
# Boot the uncompressed ELF vmlinux through its PVH entry: skips the real-mode setup and
# the XZ decompression, which cost ~3-4 s under TCG. Falls back to the bzImage.
if [ ! -f "$KDIR/vmlinux" ] && command -v python3 >/dev/null; then
    python3 - "$VMLINUZ" "$KDIR/vmlinux" <<'PY' || rm -f "$KDIR/vmlinux"
import lzma, sys
d = open(sys.argv[1], 'rb').read()
i = d.find(b'\xfd7zXZ\x00')
out = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(d[i:]) if i >= 0 else b''
if out[:4] != b'\x7fELF':
    sys.exit(1)
open(sys.argv[2], 'wb').write(out)
PY
fi
BOOTIMG=${RXE_VM_BOOTIMG:-$VMLINUZ}
[ -z "${RXE_VM_BOOTIMG:-}" ] && [ -f "$KDIR/vmlinux" ] && BOOTIMG=$KDIR/vmlinux
MODDIR=$KDIR/lib/modules/$KVER/kernel
[ -f "$(find "$MODDIR" -name 'rdma_rxe.ko*' | head -1)" ] || { log "$KPKG has no rdma_rxe module"; exit 2; }

# ---------------------------------------------------------------- 3. initramfs
# busybox + the modules for virtio/9p/overlay/rxe (deps resolved from .modinfo) + /init
INITRD=$CACHE/initrd-$KVER.cpio.gz
SELF_SUM=$(sha256sum "$0" | cut -c1-16)
if [ ! -f "$INITRD" ] || [ "$(cat "$INITRD.sum" 2>/dev/null)" != "$SELF_SUM" ]; then
    log "building initramfs for $KVER"
    ird=$(mktemp -d); mkdir -p "$ird"/{bin,dev,proc,sys,lower,upper,newroot,results,modules}
    cp /bin/busybox "$ird/bin/busybox"
    for a in sh mount umount mkdir insmod cat echo poweroff sleep chroot ln sync mknod; do ln -s busybox "$ird/bin/$a"; done
    # kernel module autoload (request_module) runs /sbin/modprobe in *this* root: forward it
    mkdir -p "$ird/sbin"; printf '#!/bin/sh\nexec /bin/chroot /newroot /sbin/modprobe "$@"\n' > "$ird/sbin/modprobe"; chmod +x "$ird/sbin/modprobe"
    declare -A seen=(); order=()
    modfile() { find "$MODDIR" -name "$1.ko" -o -name "$1.ko.xz" -o -name "$1.ko.zst" | head -1; }
    addmod() {
        local m=${1//-/_}; [ -n "${seen[$m]:-}" ] && return 0; seen[$m]=1
        local f; f=$(modfile "$m"); [ -z "$f" ] && f=$(modfile "${1//_/-}")
        [ -z "$f" ] && return 0     # built into this kernel
        local deps; deps=$(tr '\0' '\n' < "$f" | sed -n 's/^depends=//p' | head -1)
        local d; for d in ${deps//,/ }; do addmod "$d"; done
        cp "$f" "$ird/modules/"; order+=("$(basename "$f")")
    }
    # rxe needs the "crc32" shash at device creation (else `rdma link add` fails with ENOENT)
    for m in virtio_pci 9pnet_virtio 9p overlay crc32_generic crc32_pclmul rdma_rxe dummy; do addmod "$m"; done
    printf '%s\n' "${order[@]}" > "$ird/modules/order"
    cat > "$ird/init" <<'INIT'
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
V=; grep -q rxevm_verbose /proc/cmdline && V=1
t() { [ -n "$V" ] && echo "rxe-vm-init: $1 at $(cut -d' ' -f1 /proc/uptime)s"; }
t start
for m in $(cat /modules/order); do insmod /modules/$m || echo "insmod $m failed"; done
t modules-loaded
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,access=any,cache=loose hostroot /lower || { echo "9p root mount failed"; poweroff -f; }
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,access=any results /results || { echo "9p results mount failed"; poweroff -f; }
mount -t tmpfs -o mode=0755 tmpfs /upper; mkdir -p /upper/u /upper/w
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w /newroot || { echo "overlay failed"; poweroff -f; }
R=/newroot
mount -t proc proc $R/proc; mount -t sysfs sys $R/sys; mount -t devtmpfs dev $R/dev
mkdir -p $R/dev/pts $R/dev/shm $R/run/rxe-vm; mount -t devpts devpts $R/dev/pts; mount -t tmpfs tmpfs $R/dev/shm
mount -t tmpfs tmpfs $R/run; mkdir -p $R/run/rxe-vm; mount --bind /results $R/run/rxe-vm
for a in $(cat /proc/cmdline); do case $a in rxevm_mods=*) MODS=${a#rxevm_mods=};; esac; done
KV=$(cat /proc/sys/kernel/osrelease)
if [ -n "$MODS" ] && [ -d "/lower$MODS" ]; then mkdir -p "$R/lib/modules/$KV" && mount --bind "/lower$MODS" "$R/lib/modules/$KV"; fi
[ -z "$V" ] && echo 0 > /proc/sys/kernel/printk 2>/dev/null
t mounts-done
chroot $R /bin/bash /run/rxe-vm/stage2.sh
echo $? > /results/rc
t command-exited
sync; umount $R/run/rxe-vm; umount /results
poweroff -f
INIT
    chmod +x "$ird/init"
    (cd "$ird" && find . | /bin/busybox cpio -o -H newc 2>/dev/null | gzip -1 > "$INITRD.tmp")
    mv "$INITRD.tmp" "$INITRD"; echo "$SELF_SUM" > "$INITRD.sum"; rm -rf "$ird"
fi
flock -u 9

[ "${1:-}" = "--install-only" ] && { log "ready: kernel $KVER, initramfs $INITRD"; exit 0; }
[ "${1:-}" = "--" ] && shift
[ $# -gt 0 ] || { echo "usage: $0 [--] CMD [ARGS...]" >&2; exit 2; }

# ---------------------------------------------------------------- 4. stage 2 (runs in the guest, chrooted into the overlay)
RES=$(mktemp -d /tmp/rxe-vm-run.XXXXXX)
trap 'rm -rf "$RES"' EXIT
{
    echo '#!/bin/bash'
    # same environment as the caller, minus what belongs to this shell
    export -p | grep -v -E '^declare -x (PWD|OLDPWD|SHLVL|_|TERM|HOSTNAME|TMPDIR)='
    echo 'export TERM=dumb'
    echo "[ -n \"\${RXE_VM_VERBOSE:-}\" ] && echo \"rxe-vm: stage2 at \$(cut -d\" \" -f1 /proc/uptime)s\""
    echo 'ip link set lo up'
    case $NETDEV in
        lo) echo 'rdma link add rxe0 type rxe netdev lo || exit 120' ;;
        none) echo 'echo "rxe-vm: RXE_NETDEV=none, no rxe device created" >&2' ;;
        dummy) echo 'ip link add rxenet0 type dummy && ip link set rxenet0 up && rdma link add rxe0 type rxe netdev rxenet0 || exit 120' ;;
        *) echo "rdma link add rxe0 type rxe netdev $NETDEV || exit 120" ;;
    esac
    # wait until the port is ACTIVE and GIDs are populated
    echo 'for i in $(seq 50); do grep -q ACTIVE /sys/class/infiniband/rxe0/ports/1/state 2>/dev/null && break; sleep 0.1; done'
    [ "${RXE_VM_VERBOSE:-0}" = 1 ] && echo 'echo "rxe-vm: rxe ready at $(cut -d" " -f1 /proc/uptime)s"; rdma link; ibv_devices 2>/dev/null'
    printf 'cd %q || exit 121\n' "$PWD"
    printf 'exec'; printf ' %q' "$@"; printf ' </dev/null 2>&1\n'
} > "$RES/stage2.sh"

# ---------------------------------------------------------------- 5. boot
if [ "$ACCEL" = auto ]; then
    if [ -w /dev/kvm ] && [ ! -d /sys/module/kvm_pvm ]; then ACCEL=kvm; else ACCEL=tcg; fi
fi
if [ "$ACCEL" = kvm ]; then ACC=(-accel kvm -cpu host); else ACC=(-accel tcg,thread=multi -cpu max); fi
APPEND="console=ttyS0 panic=-1 rdinit=/init rxevm_mods=$KDIR/lib/modules/$KVER"
if [ "${RXE_VM_VERBOSE:-0}" = 1 ]; then APPEND="$APPEND rxevm_verbose"; else APPEND="$APPEND quiet loglevel=1"; fi
log "booting $KVER ($ACCEL, $CPUS vCPU, $MEM), rxe0 on $NETDEV: $*"
t0=$(date +%s%N)
set +e
timeout --foreground -k 10 "$TIMEOUT" qemu-system-x86_64 "${ACC[@]}" -M pc -smp "$CPUS" -m "$MEM" \
    -nodefaults -no-reboot -display none -serial stdio -monitor none -nic none \
    -kernel "$BOOTIMG" -initrd "$INITRD" -append "$APPEND" \
    -fsdev local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap \
    -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot \
    -fsdev local,id=results,path="$RES",security_model=none \
    -device virtio-9p-pci,fsdev=results,mount_tag=results \
    </dev/null | sed -u 's/\r$//'
qrc=${PIPESTATUS[0]}
set -e
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
log "VM exited (qemu rc=$qrc) after $((ms / 1000)).$(printf %03d $((ms % 1000)))s"
if [ -s "$RES/rc" ]; then exit "$(cat "$RES/rc")"; fi
log "no exit status from the guest (timeout or crash)"; exit 124
