//! CPU and memory of the processes a checkpoint and restore involve, sampled
//! from /proc in a thread of ferry's own (no extra daemon), and aggregated per
//! run and phase as they come: memory stays bounded however long the bench.
//!
//! Groups: dockerd, containerd, the shims, CRIU (with runc), ferry itself, and
//! the whole host. The runc and CRIU that ferry starts (the fast path) are
//! counted exactly, from ferry's children's CPU once they are reaped; those
//! Docker starts are seen only while they live, between two samples, so on the
//! Docker API path their figures are a lower bound.

use std::collections::BTreeMap;
use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Sampling period: the issue asks for 50–100 ms.
const PERIOD: Duration = Duration::from_millis(100);

pub(crate) const GROUPS: [&str; 5] = ["dockerd", "containerd", "shim", "criu", "ferry"];

/// What one run and phase cost, averaged over its samples.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct PhaseUsage {
    /// Per group: mean CPU % (user, system) of one core, and peak RSS in MiB.
    pub user_pct: [f64; 5],
    pub system_pct: [f64; 5],
    pub rss_mib_peak: [f64; 5],
    /// The whole host: mean and peak CPU % busy (of all cores), peak memory used.
    pub host_cpu_pct_mean: f64,
    pub host_cpu_pct_peak: f64,
    pub host_mem_used_mib_peak: f64,
    /// Seconds of samples behind the means.
    pub sampled_secs: f64,
}

#[derive(Default)]
struct Snapshot {
    /// (user, system) clock ticks per pid and its group.
    ticks: BTreeMap<u32, (usize, u64, u64)>,
    /// ferry's reaped children (runc, CRIU): cutime and cstime.
    children: (u64, u64),
    rss_mib: [f64; 5],
    host_busy: u64,
    host_total: u64,
    host_mem_used_mib: f64,
}

struct State {
    phase: Option<(usize, &'static str)>,
    last: Snapshot,
    last_at: Instant,
    usage: BTreeMap<(usize, &'static str), PhaseUsage>,
}

pub(crate) struct Telemetry {
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    sampler: Option<thread::JoinHandle<()>>,
}

impl Telemetry {
    pub(crate) fn start() -> Telemetry {
        let state = Arc::new(Mutex::new(State { phase: None, last: read_snapshot(), last_at: Instant::now(), usage: BTreeMap::new() }));
        let stop = Arc::new(AtomicBool::new(false));
        let (thread_state, thread_stop) = (state.clone(), stop.clone());
        let sampler = thread::spawn(move || {
            while !thread_stop.load(Ordering::SeqCst) {
                thread::sleep(PERIOD);
                sample(&thread_state);
            }
        });
        Telemetry { state, stop, sampler: Some(sampler) }
    }

    /// Closes the current phase with one last sample and starts tagging
    /// samples with `phase` of `run` (or nothing).
    pub(crate) fn enter(&self, phase: Option<(usize, &'static str)>) {
        sample(&self.state);
        self.state.lock().unwrap_or_else(|p| p.into_inner()).phase = phase;
    }

    pub(crate) fn usage(&self, run: usize, phase: &'static str) -> PhaseUsage {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.usage.get(&(run, phase)).cloned().unwrap_or_default()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(sampler) = self.sampler.take() {
            let _ = sampler.join();
        }
    }
}

fn sample(state: &Mutex<State>) {
    let now = read_snapshot();
    let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
    let elapsed = state.last_at.elapsed().as_secs_f64().max(0.001);
    if let Some(key) = state.phase {
        let ticks_per_sec = clock_ticks();
        let mut user = [0.0; 5];
        let mut system = [0.0; 5];
        let pct = |ticks: u64| ticks as f64 / ticks_per_sec / elapsed * 100.0;
        for (pid, (group, u, s)) in &now.ticks {
            // A process new since the last sample spent all its ticks since then.
            let (pu, ps) = state.last.ticks.get(pid).map_or((0, 0), |(_, pu, ps)| (*pu, *ps));
            user[*group] += pct(u.saturating_sub(pu));
            system[*group] += pct(s.saturating_sub(ps));
        }
        user[3] += pct(now.children.0.saturating_sub(state.last.children.0));
        system[3] += pct(now.children.1.saturating_sub(state.last.children.1));
        let total = now.host_total.saturating_sub(state.last.host_total).max(1);
        let host = now.host_busy.saturating_sub(state.last.host_busy) as f64 / total as f64 * 100.0;
        let usage = state.usage.entry(key).or_default();
        let before = usage.sampled_secs;
        let weight = |mean: f64, value: f64| (mean * before + value * elapsed) / (before + elapsed);
        for g in 0..GROUPS.len() {
            usage.user_pct[g] = weight(usage.user_pct[g], user[g]);
            usage.system_pct[g] = weight(usage.system_pct[g], system[g]);
            usage.rss_mib_peak[g] = usage.rss_mib_peak[g].max(now.rss_mib[g]);
        }
        usage.host_cpu_pct_mean = weight(usage.host_cpu_pct_mean, host);
        usage.host_cpu_pct_peak = usage.host_cpu_pct_peak.max(host);
        usage.host_mem_used_mib_peak = usage.host_mem_used_mib_peak.max(now.host_mem_used_mib);
        usage.sampled_secs = before + elapsed;
    }
    state.last = now;
    state.last_at = Instant::now();
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a constant. (c_long: 32 bits on armv7.)
    match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        n if n > 0 => n as f64,
        _ => 100.0,
    }
}

fn group_of(pid: u32, comm: &str) -> Option<usize> {
    if pid == std::process::id() {
        return Some(4);
    }
    match comm {
        "dockerd" => Some(0),
        "containerd" => Some(1),
        c if c.starts_with("containerd-shim") => Some(2),
        "criu" | "runc" => Some(3),
        // CRIU behind a loader wrapper shows as the loader: look at its command line.
        c if c.starts_with("ld-linux") => {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            cmdline.split(|b| *b == 0).any(|arg| arg.ends_with(b"/criu")).then_some(3)
        }
        _ => None,
    }
}

/// The fields of /proc/PID/stat after the command name, and the name.
fn proc_stat(pid: u32) -> Option<(String, Vec<u64>)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm is in parentheses and may hold spaces: split after the last ')'.
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    // proc(5) numbers fields from 1; after comm (field 2) comes state (3),
    // which is not a number: fields[i - 3] is field i.
    let fields = stat[close + 2..].split_whitespace().map(|f| f.parse().unwrap_or(0)).collect();
    Some((stat[open + 1..close].to_string(), fields))
}

fn read_snapshot() -> Snapshot {
    let mut snapshot = Snapshot::default();
    let page_mib = 4096.0 / (1024.0 * 1024.0);
    let me = std::process::id();
    let mut parents = BTreeMap::new();
    let mut found = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            let Some((comm, fields)) = proc_stat(pid) else { continue };
            let field = |i: usize| fields.get(i - 3).copied().unwrap_or(0);
            parents.insert(pid, field(4) as u32);
            if let Some(group) = group_of(pid, &comm) {
                found.push((pid, group, field(14), field(15), field(24)));
            }
            if pid == me {
                snapshot.children = (field(16), field(17));
            }
        }
    }
    // runc and CRIU under ferry are counted once reaped, from ferry's children.
    let under_ferry = |mut pid: u32| {
        for _ in 0..4 {
            match parents.get(&pid) {
                Some(&parent) if parent == me => return true,
                Some(&parent) if parent > 1 => pid = parent,
                _ => return false,
            }
        }
        false
    };
    for (pid, group, user, system, rss) in found {
        snapshot.rss_mib[group] += rss as f64 * page_mib;
        if group == 3 && under_ferry(pid) {
            continue;
        }
        snapshot.ticks.insert(pid, (group, user, system));
    }
    if let Ok(stat) = fs::read_to_string("/proc/stat") {
        let cpu: Vec<u64> = stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
        let idle = cpu.get(3).copied().unwrap_or(0) + cpu.get(4).copied().unwrap_or(0);
        snapshot.host_total = cpu.iter().take(8).sum();
        snapshot.host_busy = snapshot.host_total.saturating_sub(idle);
    }
    if let Ok(meminfo) = fs::read_to_string("/proc/meminfo") {
        let kib = |key: &str| {
            meminfo.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok()).unwrap_or(0.0)
        };
        snapshot.host_mem_used_mib = (kib("MemTotal:") - kib("MemAvailable:")) / 1024.0;
    }
    snapshot
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ferry_itself_is_sampled_and_busy_phases_show_cpu() {
        let telemetry = Telemetry::start();
        telemetry.enter(Some((0, "busy")));
        let started = Instant::now();
        let mut x = 0u64;
        while started.elapsed() < Duration::from_millis(350) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        telemetry.enter(None);
        let usage = telemetry.usage(0, "busy");
        assert!(usage.sampled_secs >= 0.3, "{usage:?}");
        assert!(usage.host_mem_used_mib_peak > 0.0);
        // qemu-user fakes a process's view of its own /proc/PID/stat (no CPU
        // time, no RSS): the ARM tests run under it. Where the kernel answers,
        // the spin must show.
        let own_ticks = proc_stat(std::process::id()).map_or(0, |(_, f)| f[14 - 3] + f[15 - 3]);
        if own_ticks > 0 {
            assert!(usage.user_pct[4] > 20.0, "ferry spun a core: {usage:?}");
            assert!(usage.rss_mib_peak[4] > 0.0);
        }
        assert_eq!(telemetry.usage(0, "never").sampled_secs, 0.0);
    }
}
