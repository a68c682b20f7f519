//! `ferry bench`: the paper's experiments on this host — checkpoint and
//! restore time against memory (Fig. 2), CRIU against commit (Fig. 3), CPU
//! during checkpoint and restore (Figs. 4, 5), per-phase statistics (Table 1)
//! — with the paper's own method measured beside ferry in the same run.

pub(crate) mod criu_stats;
pub(crate) mod export;
pub(crate) mod results;
pub(crate) mod stats;
pub(crate) mod telemetry;

use std::fs::{self, File};
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::board::Tuning;
use crate::engine::{Engine, Info};
use crate::error::{io_error, Error, Kind, Result};
use crate::host;
use crate::identity::{Identity, Trust, Verifier};
use crate::migration::restore::{self, restore_from};
use crate::migration::{checkpoint, criu_error, preflight, resume};
use crate::payload::Mode;
use crate::transfer::client::Peer;
use crate::transfer::migrate::{hand_over, migration_id, Handover, Sending};
use crate::units::seconds_since;
pub(crate) use results::{HostFacts, Phase, Results, Row};
use telemetry::{PhaseUsage, Telemetry};

const SOURCE: &str = "ferry-bench-src";
const TARGET: &str = "ferry-bench-dst";

pub(crate) struct Options {
    pub sizes: Vec<u32>,
    pub repeat: u32,
    pub modes: Vec<Mode>,
    pub baseline: bool,
    pub out: PathBuf,
    pub image: String,
    /// The board's caps for the workload, ferry's buffers, and the work dir.
    pub tuning: Tuning,
    pub fast: bool,
    /// Restore on this peer's agent instead of here (ferry's modes only).
    pub peer: Option<Peer>,
    /// This host's key, which signs the bench's local payloads as any other.
    pub signer: Option<std::sync::Arc<Identity>>,
}

/// Runs every size × repetition × method, then writes every output.
pub(crate) fn run(engine: &Engine, options: &Options) -> Result<Results> {
    let info = engine.info()?;
    engine.inspect_image(&options.image).map_err(|_| {
        Error::new(Kind::NotFound, format!("the workload image {} is not here — `bash tests/scripts/engines.sh start a` builds it from tests/scripts/workload (make demo and make test do)", options.image))
    })?;
    fs::create_dir_all(&options.out).map_err(|e| io_error(options.out.display(), e))?;
    fs::create_dir_all(&options.tuning.work_dir).map_err(|e| io_error(options.tuning.work_dir.display(), e))?;
    // What every restore here needs, learnt once per engine (an agent does it
    // when it starts): taken now, so that no figure holds it.
    crate::migration::confinement::of_new_containers(engine, &info, &options.image, &options.tuning.work_dir)?;
    let telemetry = Telemetry::start();
    let mut methods: Vec<&'static str> = options
        .modes
        .iter()
        .map(|mode| method_of(*mode))
        .collect();
    if options.baseline {
        methods.push("baseline");
    }
    let total_runs = options.sizes.len() * options.repeat as usize * methods.len();
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut run_index = 0;
    for &size in &options.sizes {
        for repetition in 1..=options.repeat {
            for &method in &methods {
                if host::stderr_is_terminal() {
                    let eta = if run_index == 0 { String::new() } else {
                        let each = started.elapsed().as_secs_f64() / run_index as f64;
                        format!(", about {:.0}s left", each * (total_runs - run_index) as f64)
                    };
                    eprint!("\rbench: {size} MiB, {method}, repetition {repetition}/{} (run {}/{total_runs}{eta})   ", options.repeat, run_index + 1);
                }
                let run = Run { engine, info: &info, options, telemetry: &telemetry, index: run_index, size, repetition, method };
                let result = run.measure();
                cleanup(engine, &options.tuning.work_dir);
                rows.extend(result.map_err(|e| e.context(format!("bench run {method} at {size} MiB")))?);
                run_index += 1;
            }
        }
    }
    if host::stderr_is_terminal() {
        eprintln!();
    }
    drop(telemetry);
    let results = Results::new(host_facts(&info, options), rows);
    for exporter in export::all() {
        let path = options.out.join(exporter.file_name());
        let mut file = BufWriter::new(File::create(&path).map_err(|e| io_error(path.display(), e))?);
        exporter.write(&results, &mut file).map_err(|e| io_error(path.display(), e))?;
    }
    Ok(results)
}

fn host_facts(info: &Info, options: &Options) -> HostFacts {
    HostFacts {
        arch: info.architecture.clone(),
        kernel: info.kernel_version.clone(),
        criu: host::criu_version().unwrap_or_default(),
        docker: info.server_version.clone(),
        cpus: thread::available_parallelism().map_or(1, |n| n.get()),
        board: options.tuning.board.as_ref().map_or("none".into(), |b| b.name.clone()),
    }
}

fn cleanup(engine: &Engine, work_dir: &Path) {
    for name in [SOURCE, TARGET] {
        let _ = engine.remove_container(name, true);
    }
    let _ = fs::remove_file(work_dir.join("bench.ferry"));
    let _ = fs::remove_file(work_dir.join("baseline.tar"));
}

struct Run<'a> {
    engine: &'a Engine,
    info: &'a Info,
    options: &'a Options,
    telemetry: &'a Telemetry,
    index: usize,
    size: u32,
    repetition: u32,
    method: &'static str,
}

/// The method name of one of ferry's modes in rows and figures.
fn method_of(mode: Mode) -> &'static str {
    match mode {
        Mode::Criu => "ferry-criu",
        Mode::Commit => "ferry-commit",
    }
}

/// What one run measured, before it becomes rows.
#[derive(Default)]
struct Measured {
    /// Seconds per phase, indexed by `Phase as usize` (`Total` is their sum).
    seconds: [f64; 6],
    raw_bytes: u64,
    compressed_bytes: u64,
    checkpoint_path: &'static str,
    criu_frozen_ms: f64,
    criu_restore_ms: f64,
}

impl Measured {
    fn get(&self, phase: Phase) -> f64 {
        match phase {
            Phase::Total => self.seconds.iter().sum(),
            measured => self.seconds[measured as usize],
        }
    }

    fn set(&mut self, phase: Phase, seconds: f64) {
        self.seconds[phase as usize] = seconds;
    }
}

impl Run<'_> {
    fn measure(&self) -> Result<Vec<Row>> {
        cleanup(self.engine, &self.options.tuning.work_dir);
        self.start_workload()?;
        let measured = match self.method {
            "ferry-criu" => self.ferry(Mode::Criu)?,
            "ferry-commit" => self.ferry(Mode::Commit)?,
            _ => self.baseline()?,
        };
        self.telemetry.enter(None);
        Ok(Phase::ALL.into_iter().map(|phase| self.row(phase, measured.get(phase), &measured)).collect())
    }

    fn row(&self, phase: Phase, seconds: f64, measured: &Measured) -> Row {
        let usage = if phase == Phase::Total { self.total_usage() } else { self.telemetry.usage(self.index, phase.as_str()) };
        Row {
            size_mib: self.size,
            method: self.method,
            repetition: self.repetition,
            phase,
            seconds,
            raw_bytes: measured.raw_bytes,
            compressed_bytes: measured.compressed_bytes,
            checkpoint_path: measured.checkpoint_path,
            criu_frozen_ms: measured.criu_frozen_ms,
            criu_restore_ms: measured.criu_restore_ms,
            usage,
        }
    }

    /// The phases' usage weighted by how long each was sampled.
    fn total_usage(&self) -> PhaseUsage {
        let mut total = PhaseUsage::default();
        for phase in Phase::MEASURED {
            let u = self.telemetry.usage(self.index, phase.as_str());
            let (before, after) = (total.sampled_secs, total.sampled_secs + u.sampled_secs);
            if after == 0.0 {
                continue;
            }
            let mix = |a: f64, b: f64| (a * before + b * u.sampled_secs) / after;
            for g in 0..telemetry::GROUPS.len() {
                total.user_pct[g] = mix(total.user_pct[g], u.user_pct[g]);
                total.system_pct[g] = mix(total.system_pct[g], u.system_pct[g]);
                total.rss_mib_peak[g] = total.rss_mib_peak[g].max(u.rss_mib_peak[g]);
            }
            total.host_cpu_pct_mean = mix(total.host_cpu_pct_mean, u.host_cpu_pct_mean);
            total.host_cpu_pct_peak = total.host_cpu_pct_peak.max(u.host_cpu_pct_peak);
            total.host_mem_used_mib_peak = total.host_mem_used_mib_peak.max(u.host_mem_used_mib_peak);
            total.sampled_secs = after;
        }
        total
    }

    fn phase(&self, phase: Phase) {
        self.telemetry.enter(Some((self.index, phase.as_str())));
    }

    /// The container body both the workload and the baseline's target use.
    fn workload_body(&self) -> serde_json::Value {
        let mut limits = crate::payload::HostLimits::default();
        if let Some(board) = &self.options.tuning.board {
            board.apply(&mut limits);
        }
        json!({
            "Image": self.options.image,
            "Cmd": ["/counter", self.size.to_string(), "100"],
            "HostConfig": limits,
        })
    }

    fn start_workload(&self) -> Result<()> {
        let id = self.engine.create_container(SOURCE, &self.workload_body())?;
        self.engine.start_container(&id, None)?;
        // Settled: its memory is filled and it counts.
        wait_for_count(self.engine, SOURCE, Duration::from_secs(60))?;
        Ok(())
    }

    fn ferry(&self, mode: Mode) -> Result<Measured> {
        let mut measured = Measured::default();
        self.phase(Phase::Checkpoint);
        let started = Instant::now();
        let carryable = preflight::check(self.engine, self.info, SOURCE, mode)?;
        let checkpoint_options = checkpoint::Options { tuning: &self.options.tuning, leave_running: false, fast: self.options.fast };
        let mut taken = checkpoint::take(self.engine, self.info, &carryable, &checkpoint_options)?;
        measured.set(Phase::Checkpoint, seconds_since(started));
        measured.checkpoint_path = if mode == Mode::Commit { "commit" } else { taken.checkpoint_path };
        measured.criu_frozen_ms = criu_stats::read_dump(&taken.stats_dump()).map_or(0.0, |s| s.frozen_time_us as f64 / 1000.0);
        let committed_image = taken.manifest.container.image_tags.first().cloned().filter(|_| mode == Mode::Commit);
        if let Some(peer) = &self.options.peer {
            self.phase(Phase::Transfer);
            // The same two-phase handover as `ferry migrate`; the bench's
            // source is thrown away, so it keeps no journal.
            let id = migration_id();
            let sent = std::sync::atomic::AtomicU64::new(0);
            let sending = Sending { io_buffer: self.options.tuning.io_buffer, pace: None, offer: None, sent: &sent, one_pass: true };
            let (report, stats, secs) = match hand_over(peer, &mut taken, TARGET, &id, sending, || Ok(())) {
                Handover::Done(handed) => (handed.restored, handed.stats, handed.transfer_secs),
                Handover::NotStarted(error) | Handover::Unknown(error) => return Err(error),
            };
            measured.set(Phase::Transfer, secs);
            // The peer's own restore time; its first sign of life is not seen from here.
            measured.set(Phase::Restore, report.restore_secs);
            (measured.raw_bytes, measured.compressed_bytes) = (stats.raw_bytes, stats.compressed_bytes);
            drop(taken);
            peer.remove_container(TARGET)?;
            return Ok(measured);
        }

        self.phase(Phase::Pack);
        let started = Instant::now();
        let payload = self.options.tuning.work_dir.join("bench.ferry");
        let file = File::create(&payload).map_err(|e| io_error(payload.display(), e))?;
        let signer = self.options.signer.as_deref().map(|s| s as &dyn crate::payload::Sign);
        let stats = taken.pack_into(BufWriter::with_capacity(self.options.tuning.io_buffer, file), signer, None, true)?;
        measured.set(Phase::Pack, seconds_since(started));
        (measured.raw_bytes, measured.compressed_bytes) = (stats.raw_bytes, stats.compressed_bytes);
        drop(taken);

        self.phase(Phase::Restore);
        let started = Instant::now();
        let file = File::open(&payload).map_err(|e| io_error(payload.display(), e))?;
        let input = BufReader::with_capacity(self.options.tuning.io_buffer, file);
        // Its own payload, signed by its own key when it has one: verified as
        // any restore verifies it, so the bench counts what that costs.
        let verifier = Verifier::new(Trust::default(), self.options.signer.as_deref(), true);
        let options = restore::Options {
            name: Some(TARGET),
            fast: self.options.fast,
            board: self.options.tuning.board.as_ref(),
            size_limit: None,
            allow_host_mismatch: false,
            verify: &verifier,
        };
        let report = restore_from(self.engine, &self.options.tuning.work_dir, "restore", input, &options)?;
        measured.set(Phase::Restore, seconds_since(started));
        let [task_dir, _] = resume::task_dirs(&self.info.docker_root_dir, &report.id);
        measured.criu_restore_ms =
            criu_stats::read_restore(&task_dir.join("stats-restore")).map_or(0.0, |s| s.restore_time_us as f64 / 1000.0);

        self.phase(Phase::FirstLife);
        let started = Instant::now();
        wait_for_count(self.engine, TARGET, Duration::from_secs(60))?;
        measured.set(Phase::FirstLife, seconds_since(started));
        if let Some(image) = committed_image {
            let _ = self.engine.remove_container(TARGET, true);
            let _ = self.engine.remove_image(&image);
        }
        Ok(measured)
    }

    /// The paper's scripts: `docker checkpoint create` + tar, then `docker
    /// create` + untar into the new container's checkpoints folder + `docker
    /// start --checkpoint`; through the API, with containerd's leftover removed.
    fn baseline(&self) -> Result<Measured> {
        let mut measured = Measured { checkpoint_path: "baseline", ..Measured::default() };
        let root = &self.info.docker_root_dir;
        let source_id = self.engine.inspect_container(SOURCE)?.id;
        self.phase(Phase::Checkpoint);
        let started = Instant::now();
        self.engine.checkpoint_create(&source_id, "cp", None, true).map_err(|e| criu_error(SOURCE, "checkpoint", e))?;
        measured.set(Phase::Checkpoint, seconds_since(started));

        self.phase(Phase::Pack);
        let started = Instant::now();
        let archive = self.options.tuning.work_dir.join("baseline.tar");
        let checkpoint = root.join("containers").join(&source_id).join("checkpoints").join("cp");
        let tar_error = |e: std::io::Error| io_error(format!("tar of {}", checkpoint.display()), e);
        let mut builder = tar::Builder::new(BufWriter::new(File::create(&archive).map_err(tar_error)?));
        builder.append_dir_all("cp", &checkpoint).map_err(tar_error)?;
        builder.into_inner().map_err(tar_error)?;
        measured.set(Phase::Pack, seconds_since(started));
        measured.raw_bytes = fs::metadata(&archive).map_or(0, |m| m.len());
        measured.compressed_bytes = measured.raw_bytes;

        self.phase(Phase::Restore);
        let started = Instant::now();
        let target_id = self.engine.create_container(TARGET, &self.workload_body())?;
        let checkpoints = root.join("containers").join(&target_id).join("checkpoints");
        fs::create_dir_all(&checkpoints).map_err(|e| io_error(checkpoints.display(), e))?;
        tar::Archive::new(BufReader::new(File::open(&archive).map_err(tar_error)?)).unpack(&checkpoints).map_err(tar_error)?;
        let before = resume::containerd_extractions();
        let started_container = self.engine.start_container(&target_id, Some("cp"));
        resume::remove_extractions(&before, &checkpoints.join("cp"));
        started_container.map_err(|e| criu_error(TARGET, "restore", e))?;
        measured.set(Phase::Restore, seconds_since(started));

        self.phase(Phase::FirstLife);
        let started = Instant::now();
        wait_for_count(self.engine, TARGET, Duration::from_secs(60))?;
        measured.set(Phase::FirstLife, seconds_since(started));
        Ok(measured)
    }
}

/// Waits until the container has logged a `count=` line: the workload is
/// alive and counting.
fn wait_for_count(engine: &Engine, name: &str, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if engine.logs(name, 5)?.contains("count=") {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::new(Kind::Failure, format!("{name} never counted within {}s", limit.as_secs())));
        }
        thread::sleep(Duration::from_millis(10));
    }
}
