#!/usr/bin/env python3
"""`make fleet-soak`: the paper's experiment on a fleet of three hosts.

Engines A, B and C (tests/scripts/engines.sh) each get a ferry agent that
joins a fleet kept in an etcd of this run's own, under a host identity of its
own (`ferry keys init`, every host trusting the two others). COUNTERS counter
workloads of MIB MiB are spread over the engines and handed to the fleet with
`ferry fleet manage`, run on the host that runs each one; then `ferry balance
--policy rotate` moves them around every EVERY for MINUTES, as host A.

Meanwhile a liveness service watches, independently of ferry:
  * every 100 ms it asks each engine's Docker API which containers run (and
    are not paused): a counter running on two engines at one instant is a
    failure ("two copies"), one running nowhere for more than 10 s is one too;
  * every 250 ms it reads the counters' logs (with Docker's timestamps) on
    every engine: `count=N` must only go up across moves, and the longest
    time between two successive counts is the longest gap in progress;
  * about every minute, and once at the end, it asks each counter to checksum
    its memory (SIGUSR1): `check=` must equal the `sum=` it printed at start.
    A check asked for during a move may go unanswered (the signal can reach a
    container as it is checkpointed): that is reported, not failed; the final
    check, with the balancer stopped, must be answered.

At the end it prints the moves from the balancer's log (attempted, succeeded,
failed), the paper's Table 1 over the successful ones (min, median, mean, max
of save, transfer, resume and downtime), the longest gap in progress, and the
incidents; it exits 1 on any failure (and then keeps its work dir, with the
logs of etcd, the agents and the balancer). Everything it started is stopped
by its PID, and the containers it made are removed, however it ends.

Usage: fleet-soak.py [--minutes M] [--every DURATION] [--counters N] [--mib MIB]
                     [--harness-only]
(defaults 180, 10s, 3, 16). --harness-only runs everything but `fleet manage`
and `balance`: for checking the harness itself, e.g. with moves made by hand.
"""
import argparse
import calendar
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

FERRY = os.path.abspath("target/release/ferry")
IMAGE = "ferry-workload:latest"
ENGINES = {"a": "/var/run/docker.sock", "b": "/run/dockerb.sock", "c": "/run/dockerc.sock"}
LEASE_TTL = "6"
BOARD = "edge-128m"
NO_COPY_LIMIT = 10.0  # seconds a counter may run nowhere (a move) before it is a failure
SAMPLE_EVERY = 0.1
HEARTBEAT_EVERY = 0.25
CHECK_EVERY = 60.0
CHECK_ANSWER_WITHIN = 20.0


def log(message):
    print(f"fleet-soak: {message}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def namespace_of(engine):
    """What runs a command as host `engine`: inside B's or C's mount namespace,
    where their data root and runc state are at the standard paths."""
    if engine == "a":
        return []
    with open(f"/run/docker{engine}.pid") as pidfile:
        return ["nsenter", f"--mount=/proc/{pidfile.read().strip()}/ns/mnt", "--"]


def ferry_as(engine, *args):
    """The command line of ferry run as host `engine`, against its engine."""
    return namespace_of(engine) + [FERRY, "--docker-socket", ENGINES[engine], *args]


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a Unix socket: the Docker Engine API."""

    def __init__(self, path, timeout=5):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def docker_api(engine, method, path):
    """(status, body bytes) of one Engine API request to `engine`."""
    connection = UnixHTTPConnection(ENGINES[engine])
    try:
        connection.request(method, path)
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def docker(engine, *args, check=True):
    return subprocess.run(["docker", "-H", f"unix://{ENGINES[engine]}", *args], check=check,
                          capture_output=True, text=True).stdout.strip()


def log_lines(raw):
    """The lines of a non-TTY container's log stream: 8-byte frame headers
    (stream, 0, 0, 0, big-endian length) before each chunk."""
    text, at = [], 0
    while at + 8 <= len(raw):
        length = int.from_bytes(raw[at + 4:at + 8], "big")
        text.append(raw[at + 8:at + 8 + length].decode("utf-8", "replace"))
        at += 8 + length
    return "".join(text).splitlines()


def timestamp_ns(stamp):
    """Docker's RFC 3339 timestamp with up to 9 decimals (trailing zeros
    trimmed) in nanoseconds since the epoch."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    seconds = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
    return seconds * 1_000_000_000 + int((fraction + "000000000")[:9])


def field(line, key):
    for word in line.split():
        if word.startswith(key + "="):
            return word[len(key) + 1:]
    return None


class Liveness:
    """The liveness service: where each counter runs, and its progress."""

    def __init__(self, counters, sums):
        self.counters = counters
        self.sums = sums  # counter → checksum printed at start
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.failures = []
        self.notes = []
        self.where = {name: set() for name in counters}
        self.nowhere_since = {}  # counter → monotonic time since which it has run nowhere
        self.no_copy_reported = set()  # counters whose present outage was reported
        self.longest_nowhere = 0.0
        self.two_copies = 0
        self.no_copy = 0
        self.api_errors = 0
        self.samples = 0
        self.last = {name: None for name in counters}  # (timestamp ns, count)
        self.longest_gap = (0.0, None)  # (seconds, counter)
        self.counts_seen = 0
        self.regressions = {}  # counter → counts that did not go up
        self.regression_said = {}  # counter → when that was last reported
        self.checks_asked = {}  # counter → monotonic time of the unanswered request
        self.checks_answered = 0
        self.checks_unanswered = 0
        self.threads = [threading.Thread(target=self.sample, daemon=True),
                        threading.Thread(target=self.heartbeat, daemon=True)]

    def start(self):
        for thread in self.threads:
            thread.start()

    def finish(self):
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=10)

    def fail(self, message):
        with self.lock:
            self.failures.append(f"{time.strftime('%H:%M:%S')} {message}")
        log(f"FAILURE: {message}")

    def sample(self):
        while not self.stop.is_set():
            began = time.monotonic()
            running = {name: set() for name in self.counters}
            for engine in ENGINES:
                try:
                    status, body = docker_api(engine, "GET", "/containers/json")
                    if status != 200:
                        raise OSError(f"HTTP {status}")
                    listed = json.loads(body)
                except (OSError, ValueError, http.client.HTTPException):
                    # An engine that does not answer runs nothing we can see.
                    self.api_errors += 1
                    continue
                for container in listed:
                    if container.get("State") != "running":
                        continue
                    for name in container.get("Names", []):
                        if name.lstrip("/") in running:
                            running[name.lstrip("/")].add(engine)
            now = time.monotonic()
            incidents = []
            with self.lock:
                self.samples += 1
                for name, engines in running.items():
                    if len(engines) > 1 and len(self.where[name]) <= 1:
                        self.two_copies += 1
                        incidents.append(f"two copies: {name} runs on {' and '.join(sorted(engines))}")
                    if engines:
                        since = self.nowhere_since.pop(name, None)
                        if since is not None:
                            self.longest_nowhere = max(self.longest_nowhere, now - since)
                        self.no_copy_reported.discard(name)
                    else:
                        since = self.nowhere_since.setdefault(name, now)
                        if now - since > NO_COPY_LIMIT and name not in self.no_copy_reported:
                            self.no_copy += 1
                            self.no_copy_reported.add(name)
                            incidents.append(f"no copy: {name} has run nowhere for {NO_COPY_LIMIT:.0f} s")
                    self.where[name] = engines
            for incident in incidents:
                self.fail(incident)
            self.stop.wait(max(0.0, SAMPLE_EVERY - (time.monotonic() - began)))

    def heartbeat(self):
        while not self.stop.is_set():
            began = time.monotonic()
            for name in self.counters:
                self.read_progress(name)
            self.stop.wait(max(0.0, HEARTBEAT_EVERY - (time.monotonic() - began)))

    def read_progress(self, name):
        """New log lines of `name` from every engine (the one it left may hold
        its last counts), in time order."""
        lines = []
        for engine in ENGINES:
            try:
                status, body = docker_api(engine, "GET", f"/containers/{name}/logs?stdout=1&timestamps=1&tail=200")
            except (OSError, http.client.HTTPException):
                continue
            if status != 200:
                continue
            for line in log_lines(body):
                stamp, _, text = line.partition(" ")
                try:
                    lines.append((timestamp_ns(stamp), engine, text))
                except ValueError:
                    continue
        lines.sort()
        with self.lock:
            last = self.last[name]
        for stamp, engine, text in lines:
            if last is not None and stamp <= last[0]:
                continue
            check = field(text, "check")
            if check is not None:
                self.answered(name, check, engine)
            # Only `count=N` lines are progress: a `check=` line repeats the last count.
            count = text.split()[0][len("count="):] if text.startswith("count=") else ""
            if not count.isdigit():
                continue
            count = int(count)
            if last is not None:
                if count <= last[1]:
                    self.went_back(name, f"count={count} on {engine} after count={last[1]}")
                gap = (stamp - last[0]) / 1e9
                with self.lock:
                    if gap > self.longest_gap[0]:
                        self.longest_gap = (gap, name)
            last = (stamp, count)
            with self.lock:
                self.counts_seen += 1
        with self.lock:
            self.last[name] = last

    def went_back(self, name, what):
        """A count that did not go up: a failure, said once per counter and
        10 s (two copies interleave their counts at every line)."""
        now = time.monotonic()
        with self.lock:
            self.regressions[name] = self.regressions.get(name, 0) + 1
            quiet = now - self.regression_said.get(name, -1e9) < 10
            if not quiet:
                self.regression_said[name] = now
        if not quiet:
            self.fail(f"{name} went back: {what}")

    def answered(self, name, check, engine):
        with self.lock:
            self.checks_asked.pop(name, None)
            self.checks_answered += 1
        if check != self.sums[name]:
            self.fail(f"{name} lost memory: check={check} on {engine}, sum={self.sums[name]} at start")

    def ask_checks(self):
        """SIGUSR1 to every counter where it runs now; one still unanswered
        from before is given up on (counted, not failed: see the docstring)."""
        now = time.monotonic()
        with self.lock:
            for name, asked in list(self.checks_asked.items()):
                if now - asked > CHECK_ANSWER_WITHIN:
                    self.checks_unanswered += 1
                    del self.checks_asked[name]
            where = {name: sorted(engines) for name, engines in self.where.items()}
        for name, engines in where.items():
            if len(engines) != 1:
                continue
            try:
                status, _ = docker_api(engines[0], "POST", f"/containers/{name}/kill?signal=USR1")
            except (OSError, http.client.HTTPException):
                continue
            if status == 204:
                with self.lock:
                    self.checks_asked.setdefault(name, now)

    def final_check(self):
        """With nothing moving any more: every counter runs on exactly one
        engine and answers a checksum."""
        with self.lock:
            self.checks_asked.clear()
        self.ask_checks()
        deadline = time.monotonic() + CHECK_ANSWER_WITHIN
        while time.monotonic() < deadline:
            with self.lock:
                if not self.checks_asked:
                    break
            time.sleep(0.2)
        with self.lock:
            where = {name: sorted(engines) for name, engines in self.where.items()}
            pending = sorted(self.checks_asked)
            self.checks_asked.clear()
        for name, engines in where.items():
            if len(engines) != 1:
                self.fail(f"at the end {name} runs on {engines or 'no engine'}")
        # A counter that stalled for good has no next count to close its gap.
        now_ns = time.time_ns()
        with self.lock:
            for name, last in self.last.items():
                if last is None:
                    self.fail(f"{name}: no count was ever read")
                elif (now_ns - last[0]) / 1e9 > self.longest_gap[0]:
                    self.longest_gap = ((now_ns - last[0]) / 1e9, name)
        for name in pending:
            self.fail(f"{name} did not answer the final memory check within {CHECK_ANSWER_WITHIN:.0f} s")


class Run:
    """What this run started, stopped by PID (and removed) in `close`."""

    def __init__(self, work):
        self.work = work
        self.processes = []  # (label, Popen), stopped in reverse order
        self.containers = []

    def spawn(self, label, command, env=None):
        logfile = open(os.path.join(self.work, f"{label}.log"), "wb")
        process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=logfile, stderr=subprocess.STDOUT)
        logfile.close()
        self.processes.append((label, process))
        return process

    def log_of(self, label, lines=20):
        try:
            with open(os.path.join(self.work, f"{label}.log"), errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def stop(self, process, grace=15):
        """SIGTERM (an agent then revokes its lease), SIGKILL after `grace`."""
        if process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def close(self):
        for _, process in reversed(self.processes):
            self.stop(process)
        for engine, name in self.containers:
            docker(engine, "rm", "-f", name, check=False)


def identities(work):
    """A config folder per host (`ferry keys init`), each trusting the others;
    the environment each host's ferry runs with."""
    envs, prints = {}, {}
    for engine in ENGINES:
        config = os.path.join(work, f"config-{engine}")
        envs[engine] = dict(os.environ, FERRY_CONFIG_DIR=config)
        out = subprocess.run([FERRY, "keys", "init", "--name", f"host-{engine}", "--san", "127.0.0.1"], env=envs[engine],
                             check=True, capture_output=True, text=True).stdout
        prints[engine] = next(word for word in out.split() if word.startswith("sha256:"))
    for engine in ENGINES:
        for other in ENGINES:
            if other != engine:
                subprocess.run([FERRY, "trust", "add", f"host-{other}", prints[other]], env=envs[engine], check=True,
                               capture_output=True)
    return envs


def start_etcd(run):
    client, peer = free_port(), free_port()
    url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    process = run.spawn("etcd", ["etcd", "--name", "soak", "--data-dir", os.path.join(run.work, "etcd"),
                                 "--listen-client-urls", url, "--advertise-client-urls", url,
                                 "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                                 "--initial-cluster", f"soak={peer_url}"])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"etcd exited ({process.returncode}):\n{run.log_of('etcd')}")
        # It listens before it has a leader: wait until it serves a read.
        connection = http.client.HTTPConnection("127.0.0.1", client, timeout=2)
        try:
            connection.request("POST", "/v3/kv/range", body=json.dumps({"key": "Lw=="}))
            if connection.getresponse().status == 200:
                return url
        except OSError:
            pass
        finally:
            connection.close()
        time.sleep(0.1)
    raise SystemExit(f"etcd did not come up on {url}:\n{run.log_of('etcd')}")


def fleet_status(etcd, envs):
    out = subprocess.run([FERRY, "fleet", "status", "--etcd", etcd, "--json"], env=envs["a"], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"ferry fleet status failed: {out.stderr.strip()}")
    return json.loads(out.stdout)


def start_agents(run, etcd, envs):
    agents = {}
    for engine in ENGINES:
        addr = f"127.0.0.1:{free_port()}"
        spool = os.path.join(run.work, f"spool-{engine}")
        agents[engine] = run.spawn(f"agent-{engine}", ferry_as(
            engine, "--work-dir", spool, "serve", "--listen", addr, "--etcd", etcd, "--node", engine,
            "--lease-ttl", LEASE_TTL, "--board", BOARD), env=envs[engine])
    deadline = time.monotonic() + 30
    while True:
        for engine, process in agents.items():
            if process.poll() is not None:
                raise SystemExit(f"the agent of {engine} exited ({process.returncode}):\n{run.log_of(f'agent-{engine}')}")
        members = {node["name"]: node for node in fleet_status(etcd, envs)["nodes"]}
        if set(members) >= set(ENGINES):
            for engine in ENGINES:
                node = members[engine]
                log(f"node {engine}: agent {node['agent']}, board {node.get('board')}, lease {node.get('lease_ttl_secs')} s")
            return agents
        if time.monotonic() > deadline:
            raise SystemExit(f"agents did not all join the fleet in 30 s: members {sorted(members)}")
        time.sleep(0.2)


def start_counters(run, count, mib):
    """`count` counters, round robin over the engines; where each runs and the
    checksum of its memory."""
    placed, sums = {}, {}
    engines = list(ENGINES)
    for index in range(count):
        name = f"ferry-fleet-soak-{index + 1}"
        engine = engines[index % len(engines)]
        for other in ENGINES:
            docker(other, "rm", "-f", name, check=False)
        run.containers += [(other, name) for other in ENGINES]
        docker(engine, "run", "-d", "--name", name, IMAGE, "/counter", str(mib), "100")
        placed[name] = engine
    deadline = time.monotonic() + 60
    for name, engine in placed.items():
        while True:
            logs = docker(engine, "logs", name)
            sum_line = next((line for line in logs.splitlines() if line.startswith("sum=")), None)
            if sum_line and "count=" in logs:
                sums[name] = field(sum_line, "sum")
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"{name} on {engine} never counted; its log:\n{logs}")
            time.sleep(0.1)
    return placed, sums


def manage(run, etcd, envs, placed):
    # A node's record lists a new container at its next lease renewal (every
    # third of the TTL): `fleet manage` finds the node there.
    deadline = time.monotonic() + 30
    while True:
        listed = {(c["name"], n["name"]) for n in fleet_status(etcd, envs).get("nodes", []) for c in n.get("containers", [])}
        if all((name, engine) in listed for name, engine in placed.items()):
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"the nodes' records never listed all counters: {sorted(listed)}")
        time.sleep(0.5)
    for name, engine in placed.items():
        out = subprocess.run(ferry_as(engine, "--work-dir", os.path.join(run.work, f"client-{engine}"),
                                      "fleet", "manage", name, "--etcd", etcd),
                             env=envs[engine], capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"ferry fleet manage {name} on {engine} failed ({out.returncode}): {out.stderr.strip()}")
    placements = {p["container"]: p for p in fleet_status(etcd, envs).get("placements", [])}
    for name, engine in placed.items():
        placement = placements.get(name)
        if not placement or placement.get("node") != engine:
            raise SystemExit(f"after fleet manage, {name} is placed on {placement and placement.get('node')}, not {engine}")


def parse_duration(text):
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for suffix in ("ms", "s", "m", "h"):
        if text.endswith(suffix) and text[:-len(suffix)].replace(".", "", 1).isdigit():
            return float(text[:-len(suffix)]) * units[suffix]
    if text.replace(".", "", 1).isdigit():
        return float(text)
    raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 10s, 500ms or 2m")


def read_moves(path):
    moves, unreadable = [], 0
    try:
        with open(path) as f:
            for line in f:
                if line.strip():
                    try:
                        moves.append(json.loads(line))
                    except ValueError:
                        unreadable += 1
    except FileNotFoundError:
        pass
    return moves, unreadable


def table(moves):
    rows = [("Save", "save_secs"), ("Transfer", "transfer_secs"), ("Resume", "resume_secs"), ("Downtime", "downtime_secs")]
    lines = [f"{'phase':<9} {'min':>8} {'median':>8} {'mean':>8} {'max':>8}  (seconds, {len(moves)} moves)"]
    for label, key in rows:
        values = [m[key] for m in moves if isinstance(m.get(key), (int, float))]
        if values:
            lines.append(f"{label:<9} {min(values):>8.3f} {statistics.median(values):>8.3f} "
                         f"{statistics.mean(values):>8.3f} {max(values):>8.3f}")
        else:
            lines.append(f"{label:<9} {'-':>8} {'-':>8} {'-':>8} {'-':>8}")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=180)
    parser.add_argument("--every", default="10s", help="how often the balancer moves (a duration: 10s, 2m)")
    parser.add_argument("--counters", type=int, default=3)
    parser.add_argument("--mib", type=int, default=16)
    parser.add_argument("--harness-only", action="store_true",
                        help="no fleet manage and no balance: check the harness (moves by hand)")
    args = parser.parse_args()
    parse_duration(args.every)
    if not os.access(FERRY, os.X_OK):
        raise SystemExit(f"no {FERRY}: run `make build` first")

    work = tempfile.mkdtemp(prefix="ferry-fleet-soak-", dir="/var/lib")
    run = Run(work)
    liveness = None
    balance_log = os.path.join(work, "balance.jsonl")
    balance_rc = None
    try:
        envs = identities(work)
        etcd = start_etcd(run)
        log(f"etcd at {etcd}; work dir {work}")
        agents = start_agents(run, etcd, envs)
        placed, sums = start_counters(run, args.counters, args.mib)
        log("counters: " + ", ".join(f"{name} on {engine}" for name, engine in placed.items()))
        liveness = Liveness(list(placed), sums)
        liveness.start()
        balancer = None
        if not args.harness_only:
            manage(run, etcd, envs, placed)
            balancer = run.spawn("balance", [FERRY, "--work-dir", os.path.join(work, "client-a"), "balance", "--etcd", etcd,
                                             "--every", args.every, "--policy", "rotate", "--log", balance_log],
                                 env=envs["a"])
        log(f"soaking for {args.minutes:g} min" + (", moves by hand" if args.harness_only else f", a move every {args.every}"))
        started = time.monotonic()
        next_check = started + CHECK_EVERY
        next_report = started + 300
        while time.monotonic() - started < args.minutes * 60:
            time.sleep(0.5)
            dead = [engine for engine, agent in agents.items() if agent.poll() is not None]
            for engine in dead:
                liveness.fail(f"the agent of {engine} exited ({agents[engine].returncode}):\n{run.log_of(f'agent-{engine}')}")
            if dead:
                break
            if balancer is not None and balancer.poll() is not None:
                balance_rc = balancer.returncode
                liveness.fail(f"ferry balance exited early ({balance_rc}):\n{run.log_of('balance')}")
                break
            if time.monotonic() >= next_check:
                liveness.ask_checks()
                next_check += CHECK_EVERY
            if time.monotonic() >= next_report:
                moves, _ = read_moves(balance_log)
                log(f"{(time.monotonic() - started) / 60:.0f} min: {len(moves)} moves, "
                    f"{sum(1 for m in moves if m.get('ok'))} ok, {len(liveness.failures)} failures")
                next_report += 300
        if balancer is not None and balancer.poll() is None:
            # A move in flight when it is stopped ends (or rolls back) first.
            run.stop(balancer, grace=60)
            balance_rc = balancer.returncode
        time.sleep(1)
        liveness.final_check()
    except BaseException:
        log(f"stopped early; the logs of etcd, the agents and the balancer are in {work}")
        raise
    finally:
        if liveness is not None:
            liveness.finish()
        run.close()
    status = report(args, liveness, balance_log, balance_rc)
    if status == 0:
        shutil.rmtree(work, ignore_errors=True)
    else:
        log(f"the logs of etcd, the agents and the balancer are in {work}")
    return status


def report(args, liveness, balance_log, balance_rc):
    moves, unreadable = read_moves(balance_log)
    succeeded = [m for m in moves if m.get("ok") is True]
    failed = [m for m in moves if m.get("ok") is not True]
    print(f"\nfleet soak: {args.counters} counters of {args.mib} MiB over engines a, b, c, {args.minutes:g} min, "
          + ("moves by hand (--harness-only)" if args.harness_only else f"a move every {args.every}"))
    print(f"migrations: {len(moves)} attempted, {len(succeeded)} succeeded, {len(failed)} failed"
          + (f", {unreadable} unreadable log lines" if unreadable else ""))
    for move in failed[:10]:
        print(f"  failed: {move.get('container')} {move.get('from')}→{move.get('to')}: {move.get('error')}")
    print()
    print(table(succeeded))
    print()
    gap, gap_counter = liveness.longest_gap
    print(f"progress: {liveness.counts_seen} counts seen, longest gap {gap:.3f} s"
          + (f" ({gap_counter})" if gap_counter else "")
          + f", counts that went back {sum(liveness.regressions.values())}")
    print(f"memory checks: {liveness.checks_answered} answered, {liveness.checks_unanswered} unanswered during moves")
    print(f"liveness: {liveness.samples} samples, two-copies incidents {liveness.two_copies}, "
          f"no-copy incidents (> {NO_COPY_LIMIT:.0f} s) {liveness.no_copy}, longest time with no copy "
          f"{liveness.longest_nowhere:.3f} s, engine API errors {liveness.api_errors}")
    failures = list(liveness.failures)
    failures += [f"migration of {m.get('container')} {m.get('from')}→{m.get('to')} failed: {m.get('error')}" for m in failed]
    if unreadable:
        failures.append(f"{unreadable} lines of the balance log are not JSON")
    if not args.harness_only:
        if balance_rc not in (0, -signal.SIGTERM, 128 + signal.SIGTERM):
            failures.append(f"ferry balance ended with {balance_rc}")
        if args.minutes * 60 >= 3 * parse_duration(args.every) and not moves:
            failures.append("the balancer made no move")
    if failures:
        print(f"\nFAILED: {len(failures)} failures")
        for failure in failures[:30]:
            print(f"  {failure}")
        return 1
    print("\nok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
