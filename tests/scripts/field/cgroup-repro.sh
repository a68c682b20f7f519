#!/usr/bin/env bash
# Issue 10, shown by hand inside one cgroup v2 guest (runs there, as root):
#   cgroup-repro.sh [IMAGE] [REWRITER]
# 1. checkpoints a counter with Docker's API (--checkpoint-dir) and shows the
#    cgroup paths CRIU recorded (crit);
# 2. restores the images unchanged into a new container: the process lands in
#    the SOURCE container's cgroup and the new container cannot be checkpointed;
# 3. restores them again after rewriting cgroup.img to the new container's
#    cgroup: the process lives there, memory.current counts it, and the
#    container can be checkpointed again.
# Needs the counter image (ferry-workload), crit (Debian's criu ships it) and
# cgroup-img-rewrite.py next to it. Prints evidence; exits 0 if step 3 works.
set -uo pipefail
IMG="${1:-ferry-workload:latest}"
REWRITE="${2:-$(dirname "$0")/cgroup-img-rewrite.py}"
work=/tmp/ferry-cgroup-repro
root="$(docker info -f '{{.DockerRootDir}}')"
driver="$(docker info -f '{{.CgroupDriver}}')"
cgpath() { case "$driver" in systemd) echo "/system.slice/docker-$1.scope" ;; *) echo "/docker/$1" ;; esac; }
show() {  # show NAME: where its process lives against where Docker put it
  local id pid want cg
  id="$(docker inspect -f '{{.Id}}' "$1")"; pid="$(docker inspect -f '{{.State.Pid}}' "$1")"
  want="$(cgpath "$id")"; cg="$(sed -n 's/^0:://p' "/proc/$pid/cgroup")"
  echo "  $1: pid $pid; /proc/$pid/cgroup: 0::$cg"
  echo "  its container's cgroup $want: $( [ -d "/sys/fs/cgroup$want" ] && echo "exists, cgroup.procs=[$(tr '\n' ' ' <"/sys/fs/cgroup$want/cgroup.procs")] memory.current=$(cat "/sys/fs/cgroup$want/memory.current") memory.max=$(cat "/sys/fs/cgroup$want/memory.max")" || echo "DOES NOT EXIST")"
  [ "$cg" != "$want" ] && echo "  the process's cgroup $cg: memory.current=$(cat "/sys/fs/cgroup$cg/memory.current" 2>/dev/null) memory.max=$(cat "/sys/fs/cgroup$cg/memory.max" 2>/dev/null)"
  [ "$driver" = systemd ] && echo "  systemd: docker-$id.scope is $(systemctl is-active "docker-$id.scope" 2>/dev/null)"
  echo "  seen from its own cgroup namespace: $(nsenter -t "$pid" -C cat "/proc/$pid/cgroup" 2>/dev/null)"
  return 0
}
place() {  # place NAME DIR: the images into the container's checkpoints folder
  local id; id="$(docker inspect -f '{{.Id}}' "$1")"
  mkdir -p "$root/containers/$id/checkpoints"
  cp -a "$2" "$root/containers/$id/checkpoints/cp"
}
rechecks() {  # rechecks NAME: can the restored container be checkpointed again?
  if out="$(docker checkpoint create --leave-running --checkpoint-dir "$work/re-$1" "$1" re 2>&1)"; then
    echo "  re-checkpoint of $1: OK ($(du -sh "$work/re-$1/re" | cut -f1) of images)"; return 0
  else echo "  re-checkpoint of $1: FAILED: $(echo "$out" | tail -1 | cut -c1-300)"; return 1; fi
}

docker rm -f cg-src cg-asis cg-fixed >/dev/null 2>&1
rm -rf "$work"; mkdir -p "$work"
echo "== $(uname -r), cgroup v$(docker info -f '{{.CgroupVersion}}'), driver $driver, $(runc --version | head -1), $(criu --version | head -1)"
docker run -d --name cg-src -m 128m --cpus 1 "$IMG" /counter 16 100 >/dev/null
sleep 3
old="$(docker inspect -f '{{.Id}}' cg-src)"
echo "== 1. source cg-src ${old:0:12}"; show cg-src
docker checkpoint create --checkpoint-dir "$work" cg-src cp >/dev/null || { echo "checkpoint of the source failed"; exit 1; }
echo "  cgroup.img sets (crit):"
crit decode -i "$work/cp/cgroup.img" --pretty | python3 -c '
import json,sys
e=json.load(sys.stdin)["entries"][0]
for s in e["sets"]:
    print("    set", s["id"], [(m["name"], m["path"], m.get("cgns_prefix")) for m in s["ctls"]])
def walk(d, depth):
    print("    " + "  "*depth + "dir", d["dir_name"], len(d.get("properties", [])), "properties")
    for c in d.get("children", []): walk(c, depth+1)
for c in e["controllers"]:
    print("    controller", c.get("cnames"))
    for d in c.get("dirs", []): walk(d, 1)'
docker rm -f cg-src >/dev/null   # as after a migration: the source is gone

echo "== 2. restore as is into cg-asis"
docker create --name cg-asis -m 128m --cpus 1 "$IMG" /counter 16 100 >/dev/null
place cg-asis "$work/cp"
docker start --checkpoint cp cg-asis >/dev/null || echo "  start --checkpoint failed"
sleep 2; show cg-asis
id="$(docker inspect -f '{{.Id}}' cg-asis)"
log="$(ls "$root/containerd/daemon/io.containerd.runtime.v2.task/moby/$id/restore.log" "/var/lib/containerd/io.containerd.runtime.v2.task/moby/$id/restore.log" 2>/dev/null | head -1)"
[ -n "$log" ] && cp "$log" "$work/restore-asis.log"
[ -n "$log" ] && grep -E 'cgns prefix|Move into|cgroup.procs|rewriting|cgroups yard|Cgroups' "$log" | head -8 | sed 's/^/  restore.log: /'
rechecks cg-asis
docker rm -f cg-asis >/dev/null 2>&1

echo "== 3. restore after rewriting cgroup.img into cg-fixed"
docker create --name cg-fixed -m 128m --cpus 1 "$IMG" /counter 16 100 >/dev/null
new="$(docker inspect -f '{{.Id}}' cg-fixed)"
cp -a "$work/cp" "$work/cp-fixed"
crit decode -i "$work/cp-fixed/cgroup.img" -o "$work/cgroup.json"
python3 "$REWRITE" "$work/cgroup.json" "$(cgpath "$old")" "$(cgpath "$new")"
crit encode -i "$work/cgroup.json" -o "$work/cp-fixed/cgroup.img"
place cg-fixed "$work/cp-fixed"
docker start --checkpoint cp cg-fixed >/dev/null || echo "  start --checkpoint failed"
sleep 2; show cg-fixed
docker logs --tail 2 cg-fixed 2>&1 | sed 's/^/  log: /'
status=0
rechecks cg-fixed || status=1
pid="$(docker inspect -f '{{.State.Pid}}' cg-fixed)"
[ "$(sed -n 's/^0:://p' "/proc/$pid/cgroup")" = "$(cgpath "$new")" ] || status=1
docker rm -f cg-fixed >/dev/null 2>&1
exit $status
