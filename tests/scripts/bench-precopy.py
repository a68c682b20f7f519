#!/usr/bin/env python3
"""`make bench-precopy`: what pre-copy and a replicated snapshot buy (issue 14).

For each memory size and dirty rate, moves the counter workload (its memory
rewritten at DIRTY MiB/s, see tests/scripts/workload/counter.c) from engine A
to engine B through B's agent, three ways:

  plain      ferry migrate NAME --to B --json
  precopy    ferry migrate NAME --to B --precopy --json
  replicate  ferry replicate NAME --to B --every 1h --once (one snapshot on B),
             then, GAP seconds later (--replicate-gap, default 0), ferry migrate
             NAME --to B --json, which can send only what changed since

and prints a markdown table of medians plus a JSON file with every run. After
each migration the counter must be counting on B with its memory intact
(SIGUSR1: `check=` equal to `expect=`, or to `sum=` with no dirty rate); a run
that fails either way is kept in the JSON and marked in the table, and the
script then exits 1. Downtime is from the final freeze to the app running on
B (the report's downtime_secs; ferry without it: save + transfer + resume);
elapsed is the whole command, pre-copy rounds included (elapsed_secs, else the
wall clock around it); wire is every payload byte the migration sent: its
pre-copy rounds' bytes_sent plus the final payload's across attempts
(bytes_sent_total, else bytes_sent), the final payload alone in the notes.
A replicate snapshot is not counted; the notes and the JSON give it apart.

The setup is bench-migrate.py's: hosts A and B each with a key of its own,
trusting the other, B's agent inside B's namespaces, and with --link RATE:DELAY
a shaped link to it (tests/scripts/link.sh). Ways the ferry binary does not
have (no --precopy, no replicate --once) are skipped with a note.

Usage: bench-precopy.py [SIZES_MIB…] [--dirty 0,1,8] [--repeat N] [--precopy-rounds N]
                        [--replicate-gap SECS] [--link RATE:DELAY] [--json PATH]
       (defaults 64 128, 0,1,8, 3, 4, 0, loopback, target/bench-precopy.json)
"""
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # no __pycache__ left in the tree
# Engines, identities and waits as the Table 1 bench has them.
bench = importlib.import_module("bench-migrate")
A, B, FERRY, IMAGE, LINK_PEER_ADDR = bench.A, bench.B, bench.FERRY, bench.IMAGE, bench.LINK_PEER_ADDR
docker, rm, wait_counting, identities, wait_listening, b_pid = (
    bench.docker, bench.rm, bench.wait_counting, bench.identities, bench.wait_listening, bench.b_pid)

AGENT_PORT = 17194
PERIOD_MS = 100
WAYS = ("plain", "precopy", "replicate")
COMMAND_TIMEOUT = 900


def b_ns(linked):
    """B's mount namespace, and with a link its network namespace too."""
    net = [f"--net=/proc/{b_pid()}/ns/net"] if linked else []
    return ["nsenter", f"--mount=/proc/{b_pid()}/ns/mnt", *net, "--"]


def ferry_can(*words):
    """Whether `ferry HELP…` mentions every word: the ways today's binary lacks are skipped."""
    result = subprocess.run([FERRY, *words[:1], "--help"], capture_output=True, text=True)
    text = result.stdout + result.stderr
    return all(w in text for w in words[1:])


def logs(host, name):
    return subprocess.run(["docker", "-H", host, "logs", name], capture_output=True, text=True).stdout


def field(line, key):
    for word in line.split():
        if word.startswith(key + "="):
            return word.split("=", 1)[1]
    return None


def memory_check(name, expected_sum):
    """Asks the counter on B to check its memory; returns None when it is
    intact, else what is wrong."""
    def check_lines():
        return [l for l in logs(B, name).splitlines() if l.startswith("check=")]
    before = len(check_lines())
    docker(B, "kill", "--signal", "USR1", name)
    deadline = time.time() + 30
    while time.time() < deadline:
        lines = check_lines()
        if len(lines) > before:
            line = lines[-1]
            check, expect = field(line, "check"), field(line, "expect") or expected_sum
            return None if check == expect else f"memory check failed: {line.strip()} (expected {expect})"
        time.sleep(0.05)
    return "no check= line within 30 s of SIGUSR1"


def ferry(env, *args):
    """Runs ferry on A; returns (seconds, stdout) or raises with its stderr."""
    t0 = time.time()
    result = subprocess.run([FERRY, *args], capture_output=True, text=True, env=env, timeout=COMMAND_TIMEOUT)
    secs = time.time() - t0
    if result.returncode != 0:
        raise RuntimeError(f"ferry {args[0]} exited {result.returncode}: {result.stderr.strip()[-400:]}")
    return secs, result.stdout


def one_run(way, size, dirty, options, context):
    """Starts a counter on A, moves it to B one way, checks it there; the row."""
    env, token, peer, spool = context["env"], context["token"], context["peer"], context["spool"]
    name = f"ferry-bench-pre-{size}-{str(dirty).replace('.', '_')}-{way}-{context['serial']}"
    context["serial"] += 1
    row = {"size_mib": size, "dirty_mib_s": dirty, "way": way, "container": name}
    rm(A, name), rm(B, name)
    try:
        docker(A, "run", "-d", "--name", name, IMAGE, "/counter", str(size), str(PERIOD_MS), str(dirty))
        wait_counting(A, name)
        expected_sum = next((field(l, "sum") for l in logs(A, name).splitlines() if l.startswith("sum=")), None)
        common = ["--work-dir", spool, "-q"]
        link = ["--to", peer, "--token-file", token]
        if way == "replicate":
            secs, _ = ferry(env, *common, "replicate", name, *link, "--every", "1h", "--once")
            row["replicate_secs"] = secs
            row["snapshot_bytes"] = snapshot_bytes(env, token, peer, name)
            time.sleep(options["replicate_gap"])
            row["replicate_gap_secs"] = options["replicate_gap"]
        extra = ["--precopy", *options["precopy_flags"]] if way == "precopy" else []
        wall, out = ferry(env, *common, "migrate", name, *link, "--json", *extra)
        report = json.loads(out)
        row.update(report_fields(report, wall))
        wait_counting(B, name)
        row["memory_error"] = memory_check(name, expected_sum)
    # bench-migrate's waits end with SystemExit; here one failed run must not end the others.
    except (RuntimeError, subprocess.CalledProcessError, subprocess.TimeoutExpired, SystemExit, ValueError) as error:
        detail = getattr(error, "stderr", None) or str(error)
        row["error"] = str(detail).strip()[-400:]
    finally:
        rm(A, name), rm(B, name)
    return row


def report_fields(report, wall):
    """The row's figures from migrate's JSON report, with today's fields as
    fallbacks for the ones pre-copy adds."""
    rounds = report.get("precopy_rounds") or []
    phases = report.get("save_secs", 0) + report.get("transfer_secs", 0) + report.get("resume_secs", 0)
    final_bytes = report.get("bytes_sent_total", report.get("bytes_sent", 0))
    return {
        "wire_bytes": final_bytes + sum(r.get("bytes_sent", 0) for r in rounds),
        "downtime_secs": report.get("downtime_secs", phases),
        "elapsed_secs": report.get("elapsed_secs", wall),
        "wall_secs": wall,
        "bytes_sent_total": final_bytes,
        "bytes_sent": report.get("bytes_sent", 0),
        "raw_bytes": report.get("raw_bytes", 0),
        "save_secs": report.get("save_secs"),
        "transfer_secs": report.get("transfer_secs"),
        "resume_secs": report.get("resume_secs"),
        "total_secs": report.get("total_secs"),
        "peak_rss_kib": report.get("peak_rss_kib"),
        "precopy_rounds": rounds,
        "precopy_round_count": len(rounds),
        "precopy_stopped": report.get("precopy_stopped"),
        "delta_base": report.get("delta_base"),
        "attempts": report.get("attempts", 1),
        "fallback_full": report.get("fallback_full", False),
    }


def snapshot_bytes(env, token, peer, name):
    """The size of the snapshot of `name` that replicate left on B, as its agent lists it."""
    try:
        _, out = ferry(env, "snapshots", "--peer", peer, "--token-file", token, "--json")
        sizes = [s.get("compressed_bytes", 0) for s in json.loads(out)
                 if s.get("container") == name or str(s.get("id", "")).startswith(name + "@")]
        return max(sizes) if sizes else None
    except (RuntimeError, ValueError):
        return None


def rounds_for(size, dirties, ways, options, linked):
    """Every run at one size, with B's agent on a spool of its own for that size."""
    rows = []
    with tempfile.TemporaryDirectory(dir="/var/lib") as work:
        token = os.path.join(work, "token")
        with open(token, "w") as f:
            f.write("bench-token-0123456789abcdef\n")
        os.chmod(token, 0o600)
        envs = identities(work)
        addr = LINK_PEER_ADDR if linked else "127.0.0.1"
        agent_b = subprocess.Popen(
            b_ns(linked) + [FERRY, "--docker-socket", "/run/dockerb.sock", "--work-dir", os.path.join(work, "spool-b"),
                            "-q", "serve", "--listen", f"{addr}:{AGENT_PORT}", "--token-file", token], env=envs["b"])
        context = {"env": envs["a"], "token": token, "peer": f"{addr}:{AGENT_PORT}",
                   "spool": os.path.join(work, "spool-a"), "serial": 0}
        try:
            wait_listening(AGENT_PORT, addr)
            for dirty in dirties:
                for _ in range(options["repeat"]):
                    for way in ways:
                        row = one_run(way, size, dirty, options, context)
                        print(progress(row), file=sys.stderr, flush=True)
                        rows.append(row)
        finally:
            agent_b.kill()
            agent_b.wait()
    return rows


def progress(row):
    head = f"bench-precopy: {row['size_mib']} MiB, {row['dirty_mib_s']} MiB/s, {row['way']}: "
    if "error" in row:
        return head + "FAILED " + row["error"]
    return head + (f"downtime {row['downtime_secs']:.3f}s, elapsed {row['elapsed_secs']:.3f}s, "
                   f"{row['wire_bytes'] / (1 << 20):.1f} MiB, rounds {row['precopy_round_count']}, "
                   f"stopped {row['precopy_stopped']}, base {row['delta_base']}"
                   + (f", {row['memory_error']}" if row.get("memory_error") else ""))


def median_of(rows, key):
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def table(rows, sizes, dirties, ways, repeat):
    """The markdown table: one line per size, dirty rate and way, medians of the good runs."""
    lines = ["| size MiB | dirty MiB/s | way | downtime s | elapsed s | wire MiB | precopy rounds | precopy stopped | notes |",
             "|---:|---:|---|---:|---:|---:|---:|---|---|"]
    for size in sizes:
        for dirty in dirties:
            for way in ways:
                group = [r for r in rows if r["size_mib"] == size and r["dirty_mib_s"] == dirty and r["way"] == way]
                if not group:
                    continue
                good = [r for r in group if "error" not in r and not r.get("memory_error")]
                notes = []
                if len(good) < len(group):
                    bad = [r for r in group if r not in good]
                    notes.append(f"{len(bad)}/{len(group)} failed: " + (bad[0].get("error") or bad[0]["memory_error"])[:120])
                if not good:
                    lines.append(f"| {size} | {dirty:g} | {way} | – | – | – | – | – | {'; '.join(notes)} |")
                    continue
                # The reason's head, counted: its tail carries each run's own figures (all in the JSON).
                heads = [str(r["precopy_stopped"]).split(":")[0] for r in good if r["precopy_stopped"]]
                stopped = [f"{h} ({heads.count(h)})" if len(set(heads)) > 1 else h for h in sorted(set(heads))]
                bases = sum(1 for r in good if r.get("delta_base"))
                fallbacks = sum(1 for r in good if r.get("fallback_full"))
                if way == "replicate" or bases:
                    notes.append(f"delta base in {bases}/{len(good)}")
                if fallbacks:
                    notes.append(f"fell back to full in {fallbacks}/{len(good)}")
                if median_of(good, "precopy_round_count"):
                    notes.append(f"final payload {median_of(good, 'bytes_sent_total') / (1 << 20):.1f} MiB")
                snapshot = median_of(good, "snapshot_bytes")
                if snapshot is not None:
                    notes.append(f"snapshot {snapshot / (1 << 20):.1f} MiB in {median_of(good, 'replicate_secs'):.2f}s")
                if len(good) < repeat:
                    notes.append(f"median of {len(good)}")
                lines.append(
                    f"| {size} | {dirty:g} | {way} | {median_of(good, 'downtime_secs'):.3f} | "
                    f"{median_of(good, 'elapsed_secs'):.3f} | {median_of(good, 'wire_bytes') / (1 << 20):.1f} | "
                    f"{median_of(good, 'precopy_round_count'):g} | {', '.join(stopped) or '–'} | {'; '.join(notes)} |")
    return "\n".join(lines)


def parse(args):
    options = {"repeat": 3, "dirties": [0.0, 1.0, 8.0], "rounds": 4, "replicate_gap": 0.0, "link": None,
               "json": "target/bench-precopy.json"}
    flags = {"--repeat": ("repeat", int), "--dirty": ("dirties", lambda v: [float(d) for d in v.split(",") if d]),
             "--precopy-rounds": ("rounds", int), "--replicate-gap": ("replicate_gap", float),
             "--link": ("link", str), "--json": ("json", str)}
    sizes = []
    i = 0
    while i < len(args):
        if args[i] in flags:
            if i + 1 >= len(args):
                raise SystemExit(f"{args[i]} needs a value; see the usage at the top of {__file__}")
            key, convert = flags[args[i]]
            options[key] = convert(args[i + 1])
            i += 2
        elif args[i].isdigit():
            sizes.append(int(args[i]))
            i += 1
        else:
            raise SystemExit(f"unknown argument {args[i]!r}; see the usage at the top of {__file__}")
    if options["link"] and options["link"].count(":") != 1:
        raise SystemExit(f"--link {options['link']}: give RATE:DELAY, e.g. 100mbit:5ms")
    return sizes or [64, 128], options


def main():
    sizes, options = parse(sys.argv[1:])
    ways, skipped = [], []
    for way, can in (("plain", True), ("precopy", ferry_can("migrate", "--precopy")),
                     ("replicate", ferry_can("replicate", "--once"))):
        (ways if can else skipped).append(way)
    options["precopy_flags"] = (["--precopy-rounds", str(options["rounds"])]
                                if ferry_can("migrate", "--precopy-rounds") else [])
    link = options["link"]
    if link:
        rate, delay = link.split(":")
        subprocess.run(["bash", os.path.join(HERE, "link.sh"), "up", rate, delay], check=True)
    rows = []
    try:
        for size in sizes:
            rows += rounds_for(size, options["dirties"], ways, options, linked=bool(link))
    finally:
        if link:
            subprocess.run(["bash", os.path.join(HERE, "link.sh"), "down"])
    print(f"link: {link + ' (RATE each way, DELAY one way)' if link else 'none (loopback)'}; "
          f"medians of {options['repeat']}; pre-copy rounds at most {options['rounds']}"
          + ("" if options["precopy_flags"] or "precopy" not in ways else " (ferry has no --precopy-rounds: its default)")
          + (f"; replicate gap {options['replicate_gap']:g}s" if "replicate" in ways else "")
          + (f"; skipped (this ferry lacks them): {', '.join(skipped)}" if skipped else ""))
    print()
    print(table(rows, sizes, options["dirties"], ways, options["repeat"]))
    os.makedirs(os.path.dirname(os.path.abspath(options["json"])), exist_ok=True)
    with open(options["json"], "w") as out:
        json.dump({"link": link, "repeat": options["repeat"], "precopy_rounds_max": options["rounds"],
                   "replicate_gap_secs": options["replicate_gap"], "skipped": skipped, "rows": rows}, out, indent=1)
    print(f"\nevery run: {options['json']}")
    failed = [r for r in rows if "error" in r or r.get("memory_error")]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
