#!/bin/sh
# Runs inside the emulated arm64 board, started by systemd.run= (tests/bench/device.sh put it
# and its inputs under /boot/firmware/bench/): RUNS lifecycles of a busybox `true` with
# Debian's runc:arm64 (unpacked here with dpkg -x), then with Baton's runtime
# (bench_runtime) with and without the default seccomp filter, all on one bundle rootfs.
# Writes its figures to bench/out.txt, ending with `done`; systemd then powers off.
b=/boot/firmware/bench
exec >"$b/out.txt" 2>&1
set -eu
runs=$(cat "$b/runs")
w=/var/tmp/baton-bench
rm -rf "$w"
mkdir -p "$w/bundle/rootfs/bin" "$w/runc-pkg" "$w/runc-state"
cp "$b/busybox" "$w/bundle/rootfs/bin/busybox"
chmod 755 "$w/bundle/rootfs/bin/busybox"
for a in true sh; do ln -s busybox "$w/bundle/rootfs/bin/$a"; done
cp "$b/config.json" "$w/bundle/config.json"
dpkg -x "$b/runc.deb" "$w/runc-pkg"
runc="$w/runc-pkg/usr/sbin/runc"
cp "$b/bench_runtime" "$w/bench_runtime"
chmod 755 "$w/bench_runtime"
echo "kernel $(uname -r), $(nproc) CPUs, $("$runc" --version | head -1)"

median() { sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
: >"$w/runc.ms"
i=0
while [ "$i" -lt "$runs" ]; do
  i=$((i + 1))
  t0=$(date +%s%N)
  "$runc" --root "$w/runc-state" run --bundle "$w/bundle" "bench-$i" </dev/null >/dev/null
  t1=$(date +%s%N)
  awk -v d=$((t1 - t0)) 'BEGIN { printf "%.3f\n", d / 1e6 }' >>"$w/runc.ms"
done
echo "runc runs=$runs median=$(median <"$w/runc.ms")"
for mode in seccomp unconfined; do
  out=$(BATON_BENCH_SECCOMP=$mode "$w/bench_runtime" "$w/bundle/rootfs" "$runs")
  printf '%s\n' "$out" | sed "s/^/baton-$mode /"
done
rm -rf "$w"
echo done
sync
