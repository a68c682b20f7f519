#!/usr/bin/env python3
"""`make bench-migrate`: the paper's Table 1 on this machine.

For each memory size, moves the counter workload from engine A to engine B
with `ferry migrate` (through real agents), with the paper's own method
(docker checkpoint create + tar, then docker create + untar into the new
container's checkpoints dir + docker start --checkpoint), and checkpoints and
restores it on one host with Podman (`checkpoint --export` / `restore
--import`), all in the same run. Prints per-phase medians and ferry's peak RSS
on both sides. ferry runs twice per size: over mutual TLS with signed
payloads (each host a key of its own, trusting the other's), and with
`--insecure` (plain HTTP, unsigned) for the cost of that safety. Figures, not
pass/fail: see ferry bench for the full study.

Usage: bench-migrate.py [SIZES_MIB…] [--repeat N]   (default 16 64 128 256, 5)
       bench-migrate.py --soak N [SIZE_MIB]          (`make soak`: N hops A⇄B, default 16 MiB)
"""
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

FERRY = os.path.abspath("target/release/ferry")
A = "unix:///var/run/docker.sock"
B = "unix:///run/dockerb.sock"
B_ROOT = "/var/lib/dockerb"  # B's /var/lib/docker, seen from this namespace
IMAGE = "ferry-workload:latest"


def run(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw).stdout.strip()


def docker(host, *args):
    return run("docker", "-H", host, *args)


def b_ns():
    return ["nsenter", f"--mount=/proc/{open('/run/dockerb.pid').read().strip()}/ns/mnt", "--"]


def wait_counting(host, name):
    deadline = time.time() + 30
    while time.time() < deadline:
        logs = subprocess.run(["docker", "-H", host, "logs", name], capture_output=True, text=True).stdout
        if "count=" in logs:
            return
        time.sleep(0.05)
    raise SystemExit(f"{name} never counted")


def rm(host, *names):
    subprocess.run(["docker", "-H", host, "rm", "-f", *names], capture_output=True)


def leftovers():
    for entry in os.listdir("/tmp"):
        if entry.startswith("ctrd-checkpoint"):
            shutil.rmtree(os.path.join("/tmp", entry), ignore_errors=True)


def peak_rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def identities(work):
    """Keys for hosts A and B under `work`, each trusting the other: the
    environment each host's ferry runs with."""
    envs, prints = {}, {}
    for host in ("a", "b"):
        config = os.path.join(work, f"config-{host}")
        envs[host] = dict(os.environ, FERRY_CONFIG_DIR=config)
        out = run(FERRY, "keys", "init", "--name", f"bench-{host}", "--san", "127.0.0.1", env=envs[host])
        prints[host] = out.split()[-1]
    run(FERRY, "trust", "add", "bench-b", prints["b"], env=envs["a"])
    run(FERRY, "trust", "add", "bench-a", prints["a"], env=envs["b"])
    return envs


def wait_listening(port):
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"no agent on port {port}")


def ferry_rounds(size, repeat, work, insecure=False):
    token = os.path.join(work, "token")
    with open(token, "w") as f:
        f.write("bench-token-0123456789abcdef\n")
    os.chmod(token, 0o600)
    envs = identities(work)
    mode = ["--insecure"] if insecure else []
    agent_b = subprocess.Popen(
        b_ns() + [FERRY, "--docker-socket", "/run/dockerb.sock", "--work-dir", os.path.join(work, "spool-b"),
                  "-q", "serve", "--listen", "127.0.0.1:17192", "--token-file", token] + mode, env=envs["b"])
    wait_listening(17192)
    rows, client_rss = [], 0
    try:
        for _ in range(repeat):
            name = "ferry-bench-mig"
            rm(A, name), rm(B, name)
            docker(A, "run", "-d", "--name", name, IMAGE, "/counter", str(size), "100")
            wait_counting(A, name)
            out = run(FERRY, "--work-dir", os.path.join(work, "spool-a"), "-q", "migrate", name, "--to",
                      "127.0.0.1:17192", "--token-file", token, "--json", *mode, env=envs["a"])
            report = json.loads(out)
            # ferry's own VmHWM: `time -v` would count runc, a child of ~10 MiB.
            client_rss = max(client_rss, report["peak_rss_kib"])
            wait_counting(B, name)
            rows.append({"save": report["save_secs"], "transfer": report["transfer_secs"],
                         "resume": report["resume_secs"], "total": report["total_secs"]})
            rm(B, name)
        agent_rss = peak_rss_kib(agent_b.pid)
    finally:
        agent_b.kill()
        agent_b.wait()
    return rows, client_rss, agent_rss


def paper_rounds(size, repeat, work):
    rows = []
    for _ in range(repeat):
        name = "ferry-bench-paper"
        rm(A, name), rm(B, name)
        docker(A, "run", "-d", "--name", name, IMAGE, "/counter", str(size), "100")
        wait_counting(A, name)
        cid = docker(A, "inspect", "-f", "{{.Id}}", name)
        archive = os.path.join(work, "paper.tar")
        t0 = time.time()
        docker(A, "checkpoint", "create", name, "cp")
        run("tar", "-C", f"/var/lib/docker/containers/{cid}/checkpoints", "-cf", archive, "cp")
        t1 = time.time()
        moved = os.path.join(work, "paper-moved.tar")  # the paper's transfer: one file copy
        shutil.copyfile(archive, moved)
        t2 = time.time()
        new = docker(B, "create", "--name", name, IMAGE, "/counter", str(size), "100")
        target = f"{B_ROOT}/containers/{new}/checkpoints"
        os.makedirs(target, exist_ok=True)
        run("tar", "-C", target, "-xf", moved)
        docker(B, "start", "--checkpoint", "cp", name)
        t3 = time.time()
        wait_counting(B, name)
        rows.append({"save": t1 - t0, "transfer": t2 - t1, "resume": t3 - t2, "total": t3 - t0})
        rm(A, name), rm(B, name)
        leftovers()
    return rows


def podman_rounds(size, repeat, work):
    if not shutil.which("podman"):
        return None
    subprocess.run(["podman", "load", "-q", "-i", "/var/cache/ferry-test/ferry-workload_latest.tar"], capture_output=True)
    rows = []
    for _ in range(repeat):
        name = "ferry-bench-podman"
        subprocess.run(["podman", "rm", "-f", name], capture_output=True)
        # This VM has no CAP_SYS_RESOURCE: podman must not raise rlimits.
        run("podman", "run", "-d", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096", "--name", name,
            f"localhost/{IMAGE}", "/counter", str(size), "100")
        time.sleep(1)
        archive = os.path.join(work, "podman.tar")
        t0 = time.time()
        run("podman", "container", "checkpoint", "--export", archive, name)
        t1 = time.time()
        run("podman", "rm", "-f", name)
        t2 = time.time()
        run("podman", "container", "restore", "--import", archive, "--name", name)
        t3 = time.time()
        rows.append({"save": t1 - t0, "transfer": 0.0, "resume": t3 - t2, "total": (t1 - t0) + (t3 - t2)})
        subprocess.run(["podman", "rm", "-f", name], capture_output=True)
        os.remove(archive)
    return rows


def median(rows, phase):
    return statistics.median(r[phase] for r in rows)


def soak(hops, size):
    """Migrates one counter back and forth `hops` times, checking after every
    hop that it runs on exactly one engine, kept counting and kept its memory."""
    with tempfile.TemporaryDirectory(dir="/var/lib") as work:
        token = os.path.join(work, "token")
        with open(token, "w") as f:
            f.write("soak-token-0123456789abcdef\n")
        os.chmod(token, 0o600)
        envs = identities(work)
        agent_a = subprocess.Popen([FERRY, "--work-dir", os.path.join(work, "spool-a"), "-q", "serve", "--listen",
                                    "127.0.0.1:17191", "--token-file", token], env=envs["a"])
        agent_b = subprocess.Popen(b_ns() + [FERRY, "--docker-socket", "/run/dockerb.sock", "--work-dir",
                                             os.path.join(work, "spool-b"), "-q", "serve", "--listen",
                                             "127.0.0.1:17192", "--token-file", token], env=envs["b"])
        wait_listening(17191), wait_listening(17192)
        name = "ferry-soak"
        rm(A, name), rm(B, name)
        docker(A, "run", "-d", "--name", name, IMAGE, "/counter", str(size), "100")
        wait_counting(A, name)
        sum_line = [l for l in docker(A, "logs", name).splitlines() if l.startswith("sum=")][0]
        memory = sum_line.split()[0].split("=")[1]
        rows, failures, here = [], [], A
        try:
            for hop in range(hops):
                there = B if here == A else A
                base = [] if here == A else b_ns()
                socket = "/var/run/docker.sock" if here == A else "/run/dockerb.sock"
                port = 17192 if here == A else 17191
                result = subprocess.run(base + [FERRY, "--docker-socket", socket, "--work-dir",
                                                os.path.join(work, "client"), "-q", "migrate", name, "--to",
                                                f"127.0.0.1:{port}", "--token-file", token, "--json"],
                                        capture_output=True, text=True, env=envs["a" if here == A else "b"])
                if result.returncode != 0:
                    failures.append(f"hop {hop}: {result.stderr.strip()}")
                    continue
                report = json.loads(result.stdout)
                rows.append({"save": report["save_secs"], "transfer": report["transfer_secs"],
                             "resume": report["resume_secs"], "total": report["total_secs"]})
                running = [h for h in (A, B) if subprocess.run(
                    ["docker", "-H", h, "inspect", "-f", "{{.State.Running}}", name],
                    capture_output=True, text=True).stdout.strip() == "true"]
                if running != [there]:
                    failures.append(f"hop {hop}: runs on {running}, expected only {there}")
                    break
                wait_counting(there, name)
                docker(there, "kill", "--signal", "USR1", name)
                deadline = time.time() + 10
                while time.time() < deadline and f"check={memory}" not in docker(there, "logs", name):
                    time.sleep(0.05)
                if f"check={memory}" not in docker(there, "logs", name):
                    failures.append(f"hop {hop}: memory checksum changed")
                here = there
                if hop % 20 == 19:
                    print(f"soak: {hop + 1}/{hops} hops, {len(failures)} failures", file=sys.stderr, flush=True)
        finally:
            agent_a.kill(), agent_b.kill()
            rm(A, name), rm(B, name)
    print(f"soak: {hops} hops of a {size} MiB counter, {len(failures)} failures")
    for failure in failures[:20]:
        print(f"  {failure}")
    if rows:
        print(f"{'phase':<9} {'min':>7} {'median':>7} {'mean':>7} {'max':>7}  (seconds)")
        for phase in ("save", "transfer", "resume", "total"):
            values = [r[phase] for r in rows]
            print(f"{phase:<9} {min(values):>7.3f} {statistics.median(values):>7.3f} "
                  f"{statistics.mean(values):>7.3f} {max(values):>7.3f}")
    leftover = [e for e in os.listdir("/tmp") if e.startswith("ctrd-checkpoint")]
    if leftover:
        print(f"containerd left {len(leftover)} checkpoint extractions in /tmp")
    return 1 if failures or leftover else 0


def main():
    args = sys.argv[1:]
    if args[:1] == ["--soak"]:
        hops = int(args[1])
        size = int(args[2]) if len(args) > 2 else 16
        sys.exit(soak(hops, size))
    repeat = 5
    if "--repeat" in args:
        i = args.index("--repeat")
        repeat = int(args[i + 1])
        del args[i:i + 2]
    sizes = [int(a) for a in args] or [16, 64, 128, 256]
    print(f"{'MiB':>5} {'method':<22} {'save_s':>7} {'transfer_s':>10} {'resume_s':>8} {'total_s':>7}  notes")
    for size in sizes:
        with tempfile.TemporaryDirectory(dir="/var/lib") as work:
            ferry, client_rss, agent_rss = ferry_rounds(size, repeat, work)
        with tempfile.TemporaryDirectory(dir="/var/lib") as work:
            plain, plain_client_rss, plain_agent_rss = ferry_rounds(size, repeat, work, insecure=True)
            paper = paper_rounds(size, repeat, work)
            podman = podman_rounds(size, repeat, work)
        for method, rows, note in [
            ("ferry migrate A→B", ferry, f"mutual TLS, signed; peak RSS client {client_rss} KiB, agent {agent_rss} KiB"),
            ("ferry --insecure A→B", plain, f"plain HTTP; peak RSS client {plain_client_rss} KiB, agent {plain_agent_rss} KiB"),
            ("paper: docker+tar A→B", paper, ""),
            ("podman export/import", podman, "one host"),
        ]:
            if rows is None:
                print(f"{size:>5} {method:<22} (podman not installed)")
                continue
            print(f"{size:>5} {method:<22} {median(rows, 'save'):>7.3f} {median(rows, 'transfer'):>10.3f} "
                  f"{median(rows, 'resume'):>8.3f} {median(rows, 'total'):>7.3f}  {note}")
        print(f"{size:>5} {'ferry speed-up':<22} {median(paper, 'total') / median(ferry, 'total'):>7.1f}x over the paper's method"
              + (f", {median(podman, 'total') / median(ferry, 'total'):.1f}x over podman" if podman else ""),
              flush=True)
        print(f"{size:>5} {'TLS cost':<22} {100 * (median(ferry, 'total') / median(plain, 'total') - 1):>+7.1f}% total, "
              f"{100 * (median(ferry, 'transfer') / median(plain, 'transfer') - 1):+.1f}% transfer", flush=True)


if __name__ == "__main__":
    main()
