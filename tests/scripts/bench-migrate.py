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

With `--link RATE:DELAY` (e.g. 100mbit:5ms) everything crosses a shaped link
instead of loopback (tests/scripts/link.sh: RATE each way, DELAY one way):
B's agent listens on 10.199.0.2 inside B's namespaces, the paper's tar is sent
to a receiver there, and Podman's export is sent there and imported from the
received copy (Podman is a one-host tool here: it exports and imports on this
host; only its file crosses the link). Downtime is from the freeze to the app
running on the peer (ferry: save + transfer + resume; the others: their
total); wire_MiB is what crossed (ferry: bytes_sent; the others: the file).

With `--workload redis` the app is Debian's redis-server (ferry-redis) holding
SIZE MiB of JSON-like records (words, names, numbers: real heap memory, which
lz4 compresses) instead of the counter's random pages (which it cannot).

Usage: bench-migrate.py [SIZES_MIB…] [--repeat N] [--link RATE:DELAY] [--workload counter|redis]
       (default 16 64 128 256, 5, loopback, counter)
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
REDIS_IMAGE = "ferry-redis:latest"
WORKLOAD = "counter"
HERE = os.path.dirname(os.path.abspath(__file__))
# Where B's agent listens: loopback inside B's namespace, or B's end of the link.
PEER_ADDR = "127.0.0.1"
LINK_PEER_ADDR = "10.199.0.2"
AGENT_PORT = 17192
RECEIVER_PORT = 17193
# Run in B's network namespace: accepts one connection on ADDR:PORT and writes
# what arrives to FILE, then exits (the end of its transfer).
RECEIVER = """
import socket, sys
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((sys.argv[1], int(sys.argv[2])))
server.listen(1)
print("listening", flush=True)
conn, _ = server.accept()
with open(sys.argv[3], "wb") as out:
    while True:
        chunk = conn.recv(1 << 20)
        if not chunk:
            break
        out.write(chunk)
"""


def run(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw).stdout.strip()


def docker(host, *args):
    return run("docker", "-H", host, *args)


def b_pid():
    return open('/run/dockerb.pid').read().strip()


def b_ns():
    """B's mount namespace, and with a link its network namespace too."""
    net = [f"--net=/proc/{b_pid()}/ns/net"] if PEER_ADDR != "127.0.0.1" else []
    return ["nsenter", f"--mount=/proc/{b_pid()}/ns/mnt", *net, "--"]


def send_over_link(path):
    """Sends the file at `path` to a receiver in B's network namespace, which
    writes it beside it; returns the received copy's path once it is whole."""
    received = path + ".received"
    receiver = subprocess.Popen(["nsenter", f"--net=/proc/{b_pid()}/ns/net", "--", sys.executable, "-c", RECEIVER,
                                 LINK_PEER_ADDR, str(RECEIVER_PORT), received], stdout=subprocess.PIPE, text=True)
    receiver.stdout.readline()  # "listening"
    with socket.create_connection((LINK_PEER_ADDR, RECEIVER_PORT)) as conn, open(path, "rb") as f:
        conn.sendfile(f)
        conn.shutdown(socket.SHUT_WR)
    if receiver.wait(timeout=600) != 0:
        raise SystemExit("the link receiver failed")
    return received


def app(size):
    """The image and command of the benchmarked app."""
    return [REDIS_IMAGE] if WORKLOAD == "redis" else [IMAGE, "/counter", str(size), "100"]


def start_app(host, name, size):
    """Starts the app on `host` (A) and waits until it holds its SIZE MiB."""
    docker(host, "run", "-d", "--name", name, *app(size))
    if WORKLOAD != "redis":
        wait_counting(host, name)
        return
    fill_redis(docker(host, "inspect", "-f", "{{.NetworkSettings.IPAddress}}", name), name, size)


def fill_redis(ip, name, size):
    """Waits for the Redis at `ip` and fills it with SIZE MiB of records."""
    deadline = time.time() + 30
    while subprocess.run(["redis-cli", "-h", ip, "ping"], capture_output=True, text=True).stdout.strip() != "PONG":
        if time.time() > deadline:
            raise SystemExit(f"{name}: redis never answered")
        time.sleep(0.1)
    fill = subprocess.run(["redis-cli", "-h", ip, "--pipe"], input=redis_records(size), capture_output=True)
    if fill.returncode != 0:
        raise SystemExit(f"{name}: filling redis failed: {fill.stderr.decode()}")


def redis_records(size):
    """RESP SET commands for about SIZE MiB of JSON-like records, the same
    every run: what a cache or session store holds."""
    import random
    rng = random.Random(size)
    words = ["alpha", "bravo", "charlie", "delta", "echo", "sensor", "gateway", "temperature", "humidity",
             "pressure", "online", "offline", "error", "warning", "ok", "north", "south", "east", "west",
             "rack", "board", "firmware", "update", "battery", "signal", "lorawan", "wifi", "edge", "node"]
    out, total, n = [], 0, 0
    while total < size << 20:
        value = ('{"id":%d,"device":"%s-%04d","site":"%s","firmware":"%d.%d.%d","readings":[%s],"note":"%s"}' % (
            n, rng.choice(words), rng.randrange(10000), rng.choice(words), rng.randrange(5), rng.randrange(20),
            rng.randrange(100), ",".join("%.2f" % rng.uniform(-40, 120) for _ in range(rng.randrange(4, 24))),
            " ".join(rng.choice(words) for _ in range(rng.randrange(5, 40))))).encode()
        key = b"rec:%d" % n
        out.append(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(key), key, len(value), value))
        total += len(value)
        n += 1
    return b"".join(out)


def wait_ready(host, name):
    """Waits until the app runs on `host` (B) where it was moved to."""
    if WORKLOAD != "redis":
        wait_counting(host, name)
        return
    deadline = time.time() + 30
    while docker(host, "inspect", "-f", "{{.State.Running}}", name) != "true":
        if time.time() > deadline:
            raise SystemExit(f"{name} does not run on {host}")
        time.sleep(0.05)


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
        out = run(FERRY, "keys", "init", "--name", f"bench-{host}", "--san", "127.0.0.1", "--san", LINK_PEER_ADDR,
                  env=envs[host])
        prints[host] = out.split()[-1]
    run(FERRY, "trust", "add", "bench-b", prints["b"], env=envs["a"])
    run(FERRY, "trust", "add", "bench-a", prints["a"], env=envs["b"])
    return envs


def wait_listening(port, addr="127.0.0.1"):
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection((addr, port), timeout=1).close()
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
                  "-q", "serve", "--listen", f"{PEER_ADDR}:{AGENT_PORT}", "--token-file", token] + mode, env=envs["b"])
    wait_listening(AGENT_PORT, PEER_ADDR)
    rows, client_rss = [], 0
    try:
        for _ in range(repeat):
            name = "ferry-bench-mig"
            rm(A, name), rm(B, name)
            start_app(A, name, size)
            out = run(FERRY, "--work-dir", os.path.join(work, "spool-a"), "-q", "migrate", name, "--to",
                      f"{PEER_ADDR}:{AGENT_PORT}", "--token-file", token, "--json", *mode, env=envs["a"])
            report = json.loads(out)
            # ferry's own VmHWM: `time -v` would count runc, a child of ~10 MiB.
            client_rss = max(client_rss, report["peak_rss_kib"])
            wait_ready(B, name)
            rows.append({"save": report["save_secs"], "transfer": report["transfer_secs"],
                         "resume": report["resume_secs"], "total": report["total_secs"],
                         "downtime": report["save_secs"] + report["transfer_secs"] + report["resume_secs"],
                         "wire": report["bytes_sent"], "raw": report["raw_bytes"],
                         "criu_frozen": report.get("criu_frozen_secs", 0.0),
                         "criu_restore": report.get("peer_criu_restore_secs", 0.0),
                         "path": {s["step"]: s["end_secs"] - s["start_secs"] for s in report.get("critical_path", [])},
                         "starts": {s["step"]: s["start_secs"] for s in report.get("critical_path", [])}})
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
        start_app(A, name, size)
        cid = docker(A, "inspect", "-f", "{{.Id}}", name)
        archive = os.path.join(work, "paper.tar")
        t0 = time.time()
        docker(A, "checkpoint", "create", name, "cp")
        run("tar", "-C", f"/var/lib/docker/containers/{cid}/checkpoints", "-cf", archive, "cp")
        t1 = time.time()
        if PEER_ADDR == "127.0.0.1":
            moved = os.path.join(work, "paper-moved.tar")  # the paper's transfer: one file copy
            shutil.copyfile(archive, moved)
        else:
            moved = send_over_link(archive)
        t2 = time.time()
        new = docker(B, "create", "--name", name, *app(size))
        target = f"{B_ROOT}/containers/{new}/checkpoints"
        os.makedirs(target, exist_ok=True)
        run("tar", "-C", target, "-xf", moved)
        docker(B, "start", "--checkpoint", "cp", name)
        t3 = time.time()
        wait_ready(B, name)
        rows.append({"save": t1 - t0, "transfer": t2 - t1, "resume": t3 - t2, "total": t3 - t0, "downtime": t3 - t0,
                     "wire": os.path.getsize(archive)})
        os.remove(moved)
        rm(A, name), rm(B, name)
        leftovers()
    return rows


def podman_rounds(size, repeat, work):
    if not shutil.which("podman"):
        return None
    image, *command = app(size)
    tar = "/var/cache/ferry-test/" + image.replace(":", "_").replace("/", "_") + ".tar"
    subprocess.run(["podman", "load", "-q", "-i", tar], capture_output=True)
    rows = []
    for _ in range(repeat):
        name = "ferry-bench-podman"
        subprocess.run(["podman", "rm", "-f", name], capture_output=True)
        # This VM has no CAP_SYS_RESOURCE: podman must not raise rlimits.
        run("podman", "run", "-d", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096", "--name", name,
            f"localhost/{image}", *command)
        if WORKLOAD == "redis":
            fill_redis(run("podman", "inspect", "-f", "{{.NetworkSettings.IPAddress}}", name), name, size)
        else:
            time.sleep(1)
        archive = os.path.join(work, "podman.tar")
        t0 = time.time()
        run("podman", "container", "checkpoint", "--export", archive, name)
        t1 = time.time()
        run("podman", "rm", "-f", name)
        # One host: the export is imported here, from the copy that crossed the link if there is one.
        imported = archive if PEER_ADDR == "127.0.0.1" else send_over_link(archive)
        t2 = time.time()
        run("podman", "container", "restore", "--import", imported, "--name", name)
        t3 = time.time()
        rows.append({"save": t1 - t0, "transfer": t2 - t1, "resume": t3 - t2, "total": t3 - t0, "downtime": t3 - t0,
                     "wire": os.path.getsize(archive)})
        subprocess.run(["podman", "rm", "-f", name], capture_output=True)
        os.remove(archive)
        if imported != archive:
            os.remove(imported)
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
    global PEER_ADDR, WORKLOAD
    args = sys.argv[1:]
    if "--workload" in args:
        i = args.index("--workload")
        WORKLOAD = args[i + 1]
        del args[i:i + 2]
        if WORKLOAD not in ("counter", "redis"):
            raise SystemExit(f"--workload {WORKLOAD}: use counter or redis")
    if args[:1] == ["--soak"]:
        hops = int(args[1])
        size = int(args[2]) if len(args) > 2 else 16
        sys.exit(soak(hops, size))
    repeat = 5
    if "--repeat" in args:
        i = args.index("--repeat")
        repeat = int(args[i + 1])
        del args[i:i + 2]
    link = None
    if "--link" in args:
        i = args.index("--link")
        link = args[i + 1]
        del args[i:i + 2]
        if link.count(":") != 1:
            raise SystemExit(f"--link {link}: give RATE:DELAY, e.g. 100mbit:5ms")
    sizes = [int(a) for a in args] or [16, 64, 128, 256]
    if link:
        rate, delay = link.split(":")
        subprocess.run(["bash", os.path.join(HERE, "link.sh"), "up", rate, delay], check=True)
        PEER_ADDR = LINK_PEER_ADDR
    try:
        table(sizes, repeat, link)
    finally:
        if link:
            subprocess.run(["bash", os.path.join(HERE, "link.sh"), "down"])


def table(sizes, repeat, link):
    print(f"link: {link + ' (RATE each way, DELAY one way)' if link else 'none (loopback)'}; medians of {repeat}; "
          f"workload: {WORKLOAD}")
    print(f"{'MiB':>5} {'method':<22} {'save_s':>7} {'transfer_s':>10} {'resume_s':>8} {'downtime_s':>10} {'total_s':>7} "
          f"{'wire_MiB':>8}  notes")
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
            ("podman export/import", podman, "one host" + (": its file crosses the link" if link else "")),
        ]:
            if rows is None:
                print(f"{size:>5} {method:<22} (podman not installed)")
                continue
            print(f"{size:>5} {method:<22} {median(rows, 'save'):>7.3f} {median(rows, 'transfer'):>10.3f} "
                  f"{median(rows, 'resume'):>8.3f} {median(rows, 'downtime'):>10.3f} {median(rows, 'total'):>7.3f} "
                  f"{median(rows, 'wire') / (1 << 20):>8.1f}  {note}")
        print(f"{size:>5} {'ferry speed-up':<22} {median(paper, 'total') / median(ferry, 'total'):>7.1f}x over the paper's method"
              + (f", {median(podman, 'total') / median(ferry, 'total'):.1f}x over podman" if podman else ""),
              flush=True)
        print(f"{size:>5} {'TLS cost':<22} {100 * (median(ferry, 'total') / median(plain, 'total') - 1):>+7.1f}% total, "
              f"{100 * (median(ferry, 'transfer') / median(plain, 'transfer') - 1):+.1f}% transfer", flush=True)
        print(f"{size:>5} {'lz4':<22} {median(ferry, 'raw') / max(median(ferry, 'wire'), 1):>7.2f}x (raw/wire: "
              f"{median(ferry, 'raw') / (1 << 20):.1f} MiB of checkpoint, {median(ferry, 'wire') / (1 << 20):.1f} MiB sent)")
        print_critical_path(size, ferry)
        print_floor(size, ferry)


def print_critical_path(size, rows):
    """Where ferry's downtime went (TLS runs): each step's median start and
    length after the freeze, as `migrate --json` reports them."""
    steps = [step for step in rows[0]["path"]] if rows and rows[0]["path"] else []
    if not steps:
        return
    parts = []
    for step in steps:
        start = statistics.median(r["starts"][step] for r in rows)
        length = statistics.median(r["path"][step] for r in rows)
        parts.append(f"{step} {start:.3f}+{length:.3f}")
    print(f"{size:>5} {'critical path (s)':<22} " + " | ".join(parts), flush=True)


def print_floor(size, rows):
    """What no way of moving the bytes can take away, from the same runs:
    CRIU's own frozen and restore times, and the two steps runc and Docker
    wrap around them (the save: freeze to images on disk; Docker's start
    from a checkpoint already in place) — ferry's total with nothing to move."""
    if not rows or "commit + start" not in rows[0]["path"]:
        return
    criu = median(rows, "criu_frozen") + median(rows, "criu_restore")
    save = statistics.median(r["path"]["save"] for r in rows)
    start = statistics.median(r["path"]["commit + start"] for r in rows)
    total = median(rows, "total")
    print(f"{size:>5} {'floor (s)':<22} CRIU alone {criu:.3f} (frozen {median(rows, 'criu_frozen'):.3f} + restore "
          f"{median(rows, 'criu_restore'):.3f}); with runc and Docker around it, nothing moved: {save + start:.3f} "
          f"(save {save:.3f} + start from checkpoint {start:.3f}); ferry {total:.3f} = floor + {total - save - start:.3f}",
          flush=True)


if __name__ == "__main__":
    main()
