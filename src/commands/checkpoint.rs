//! `ferry checkpoint`: a running container → one payload stream.

use std::fs::{self, File};
use std::os::unix::fs::OpenOptionsExt;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use argh::FromArgs;
use serde::Deserialize;
use serde_json::json;

use super::{human_bytes, inspect_named, print_report, restore, seconds_since, Context};
use crate::engine::{self, ContainerInspect, Engine, Info, CHANGE_ADDED, CHANGE_DELETED, CHANGE_MODIFIED};
use crate::error::{io_error, Error, Kind, Result};
use crate::host::{self, JobDir};
use crate::runc;
use crate::payload::{self, ContainerSpec, Manifest, Mode, RootfsArchive, RootfsChanges, SourceHost};

/// The checkpoint name ferry gives CRIU images inside a payload.
pub(crate) const CHECKPOINT_NAME: &str = "ferry";

#[derive(FromArgs, Debug)]
/// Checkpoint a running container into a payload (a file, or stdout with -o -).
#[argh(subcommand, name = "checkpoint")]
pub(crate) struct Args {
    /// the container's name or id
    #[argh(positional)]
    pub container: String,
    /// where to write the payload: a file, or - for stdout (default: NAME.ferry)
    #[argh(option, short = 'o')]
    pub output: Option<String>,
    /// keep the container running after the checkpoint
    #[argh(switch)]
    pub leave_running: bool,
    /// criu (the process carries on, default) or commit (docker commit + save: the app restarts)
    #[argh(option, default = "Mode::Criu", from_str_fn(parse_mode))]
    pub mode: Mode,
    /// use this board profile's buffer and lz4 block sizes and work dir
    #[argh(option)]
    pub board: Option<String>,
    /// print the summary as one JSON object
    #[argh(switch)]
    pub json: bool,
}

pub(crate) fn parse_mode(text: &str) -> std::result::Result<Mode, String> {
    match text {
        "criu" => Ok(Mode::Criu),
        "commit" => Ok(Mode::Commit),
        other => Err(format!("unknown mode '{other}': use criu or commit")),
    }
}

/// Timings and sizes of one checkpoint.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct Report {
    pub container: String,
    pub mode: &'static str,
    /// How CRIU was asked to dump: `runc` (fast) or `docker-api` (portable).
    pub checkpoint_path: &'static str,
    pub checkpoint_secs: f64,
    pub pack_secs: f64,
    pub raw_bytes: u64,
    pub compressed_bytes: u64,
    pub output: String,
    /// ferry's own peak RSS, runc and CRIU not included.
    pub peak_rss_kib: u64,
}

pub(crate) fn run(context: &Context, args: Args) -> Result<()> {
    let tuning = context.tuning(args.board.as_deref())?;
    let engine = context.engine()?;
    let to_stdout = args.output.as_deref() == Some("-");
    let output_path = match &args.output {
        Some(path) if path != "-" => Some(PathBuf::from(path)),
        Some(_) => None,
        None => Some(PathBuf::from(format!("{}.ferry", args.container.trim_start_matches('/')))),
    };

    // Open the output before the app is frozen: a bad path must not cost a checkpoint.
    let (sink, partial): (Box<dyn Write>, Option<PartialFile>) = match &output_path {
        Some(path) => {
            // The payload holds the app's memory, its secrets included: 0600.
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| io_error(format!("cannot write {}", path.display()), e))?;
            (Box::new(BufWriter::with_capacity(tuning.io_buffer, file)), Some(PartialFile(path.clone())))
        }
        None => (Box::new(io::stdout().lock()), None),
    };

    let info = engine.info()?;
    let mut taken = take(&engine, &info, &tuning.work_dir, &args.container, args.mode, args.leave_running, context.fast)?;
    if let Some(board) = &tuning.board {
        taken.lz4_block = board.lz4_block();
    }
    let pack_started = Instant::now();
    let stats = match taken.pack_into(sink) {
        Ok(stats) => stats,
        Err(error) => return Err(taken.give_back(&engine, &info, error)),
    };
    let report = Report {
        container: taken.name.clone(),
        mode: taken.mode_name(),
        checkpoint_path: taken.checkpoint_path,
        checkpoint_secs: taken.checkpoint_secs,
        pack_secs: seconds_since(pack_started),
        raw_bytes: stats.raw_bytes,
        compressed_bytes: stats.compressed_bytes,
        // The payload is whole: keep it.
        output: partial.map(|mut p| p.keep().display().to_string()).unwrap_or_else(|| "-".into()),
        peak_rss_kib: host::peak_rss_kib(),
    };
    let line = format!(
        "checkpointed {} ({}): checkpoint {:.2}s, pack {:.2}s, {} raw, {} compressed → {}",
        report.container,
        report.mode,
        report.checkpoint_secs,
        report.pack_secs,
        human_bytes(report.raw_bytes),
        human_bytes(report.compressed_bytes),
        report.output
    );
    let json = args.json.then(|| json!(report));
    print_report(&line, json.as_ref(), to_stdout);
    Ok(())
}

/// A checkpoint taken and not yet delivered: the files to pack, and the way
/// back should delivery fail. Dropping it deletes its files.
pub(crate) struct Taken {
    pub manifest: Manifest,
    pub name: String,
    pub container_id: String,
    pub checkpoint_secs: f64,
    /// How CRIU was asked to dump: `docker-api` or `runc`.
    pub checkpoint_path: &'static str,
    /// How long the app was frozen (runc: pause to dump end or thaw; API: the
    /// whole call, an upper bound).
    pub frozen_secs: f64,
    files: Vec<(String, PathBuf)>,
    /// Whether taking it stopped the source container.
    stopped: bool,
    /// Whether the fast paths may be used to start it again.
    fast: bool,
    /// The lz4 block size of the payload (a board profile may choose it).
    pub lz4_block: lz4_flex::frame::BlockSize,
    job: JobDir,
}

impl Taken {
    /// CRIU's dump statistics, when runc dumped it (Docker keeps its own).
    pub(crate) fn stats_dump(&self) -> PathBuf {
        self.job.path().join("criu-work").join("stats-dump")
    }

    pub(crate) fn mode_name(&self) -> &'static str {
        match self.manifest.mode {
            Mode::Criu => "criu",
            Mode::Commit => "commit",
        }
    }

    /// Streams the payload into `sink`.
    pub(crate) fn pack_into(&mut self, sink: impl Write) -> Result<payload::PackStats> {
        log::info!("packing {} files", self.files.len());
        Ok(payload::pack(&mut self.manifest, &self.files, sink, self.lz4_block)?)
    }

    /// After a failed delivery: starts the source again if the checkpoint
    /// stopped it (from its own checkpoint in criu mode, so the app carries
    /// on), and returns `error` saying where the app now is.
    pub(crate) fn give_back(self, engine: &Engine, info: &Info, error: Error) -> Error {
        if !self.stopped {
            let running = engine.inspect_container(&self.container_id).is_ok_and(|i| i.state.running);
            let state = if running { "still runs here" } else { "is not running here: `docker start` it" };
            return error.context(format!("{} was not moved and {state}", self.name));
        }
        log::warn!("{error}; starting {} again here", self.name);
        let resumed = match self.manifest.mode {
            Mode::Criu => restore::start_from_checkpoint(
                engine,
                info,
                &self.container_id,
                &self.job.path().join(CHECKPOINT_NAME),
                CHECKPOINT_NAME,
                self.fast,
            ),
            Mode::Commit => engine.start_container(&self.container_id, None).map_err(Error::from),
        };
        match resumed {
            Ok(()) => error.context(format!("{} was not moved and runs again here", self.name)),
            Err(resume) => error.context(format!(
                "{} is stopped here and could not be started again ({resume}) — its checkpoint is kept in {}",
                self.name,
                self.job.keep().display()
            )),
        }
    }
}

/// Checkpoints `container`: CRIU images and rootfs changes (criu mode) or a
/// committed image (commit mode) in a job folder under `work_dir`.
/// Without `leave_running` the container is stopped.
pub(crate) fn take(
    engine: &Engine,
    info: &Info,
    work_dir: &Path,
    container: &str,
    mode: Mode,
    leave_running: bool,
    fast: bool,
) -> Result<Taken> {
    let inspect = inspect_named(engine, container)?;
    if !inspect.state.running {
        return Err(Error::new(
            Kind::Refused,
            format!(
                "container '{}' is not running (state: {}) — start it or pass a running container",
                inspect.short_name(),
                inspect.state.status
            ),
        ));
    }
    refuse_uncarryable(&inspect)?;
    if mode == Mode::Criu {
        require_experimental(info)?;
    }
    let manifest = base_manifest(engine, info, &inspect, mode)?;
    let job = JobDir::create(work_dir, "checkpoint")
        .map_err(|e| io_error(format!("cannot create a folder in the work dir {}", work_dir.display()), e))?;
    let mut taken = Taken {
        manifest,
        name: inspect.short_name().to_string(),
        container_id: inspect.id.clone(),
        checkpoint_secs: 0.0,
        checkpoint_path: "docker-api",
        frozen_secs: 0.0,
        files: Vec::new(),
        stopped: false,
        fast,
        lz4_block: payload::LZ4_BLOCK,
        job,
    };
    let started = Instant::now();
    let result = match mode {
        Mode::Criu => take_criu(engine, &mut taken, leave_running, fast),
        Mode::Commit => take_commit(engine, &mut taken, leave_running),
    };
    taken.checkpoint_secs = seconds_since(started);
    match result {
        Ok(()) => Ok(taken),
        Err(error) => Err(taken.give_back(engine, info, error)),
    }
}

fn take_criu(engine: &Engine, taken: &mut Taken, leave_running: bool, fast: bool) -> Result<()> {
    let images = taken.job.path().join(CHECKPOINT_NAME);
    let rootfs_dir = taken.job.path().join(payload::ROOTFS_DIR);
    let captured = match fast.then(|| runc_root(taken)).flatten() {
        Some(root) => dump_with_runc(engine, taken, &root, &images, &rootfs_dir, leave_running)?,
        None => None,
    };
    let (rootfs, mut files) = match captured {
        Some(captured) => captured,
        None => {
            log::info!("checkpointing {} with CRIU through Docker", taken.name);
            let frozen = Instant::now();
            engine
                .checkpoint_create(&taken.container_id, CHECKPOINT_NAME, Some(taken.job.path()), !leave_running)
                .map_err(|e| criu_error(&taken.name, "checkpoint", e))?;
            taken.checkpoint_path = "docker-api";
            taken.frozen_secs = seconds_since(frozen);
            taken.stopped = !leave_running;
            // The app's files, captured while it is gone (or, left running,
            // just after its memory), match its memory.
            capture_rootfs(engine, &taken.container_id, &rootfs_dir)?
        }
    };
    log::debug!("{} dumped by {}, {} rootfs changes", taken.name, taken.checkpoint_path, rootfs.archives.len() + rootfs.deleted.len());
    taken.manifest.checkpoint_name = Some(CHECKPOINT_NAME.into());
    taken.manifest.rootfs = rootfs;
    let listed = host::list_files(&images)
        .map_err(|e| io_error(format!("cannot read the checkpoint in {}", images.display()), e))?;
    files.extend(listed.into_iter().map(|(relative, path)| (format!("{}/{relative}", payload::CHECKPOINT_DIR), path)));
    taken.files = files;
    Ok(())
}

/// The runc root of the container when the fast path applies to it.
fn runc_root(taken: &Taken) -> Option<PathBuf> {
    let Some(root) = runc::state_root(&taken.container_id) else {
        log::debug!("no runc state for {} here: using Docker's checkpoint API", taken.name);
        return None;
    };
    // After runc kills the container Docker sees an unexpected exit, and a
    // restart policy would start it again behind ferry's back.
    let policy = taken.manifest.container.host_config.restart_policy.as_ref().map(|p| p.name.as_str());
    if !matches!(policy, None | Some("") | Some("no")) {
        log::debug!("{} has a restart policy: using Docker's checkpoint API", taken.name);
        return None;
    }
    Some(root)
}

type Captured = (RootfsChanges, Vec<(String, PathBuf)>);

/// The fast path (see `runc.rs`): freeze the container, capture its files
/// while Docker still has them mounted (a stopped container's files cost a
/// mount per API call, 0.1 s here), then let runc dump the frozen processes.
/// `None` when runc failed but the container runs again, so that Docker's API
/// can take over.
fn dump_with_runc(
    engine: &Engine,
    taken: &mut Taken,
    root: &Path,
    images: &Path,
    rootfs_dir: &Path,
    leave_running: bool,
) -> Result<Option<Captured>> {
    log::info!("checkpointing {} with CRIU through runc", taken.name);
    let thaw = |why: &str| {
        if let Err(e) = runc::resume(root, &taken.container_id) {
            log::warn!("{why}, and {} could not be thawed: {e}", taken.name);
        }
    };
    let frozen = Instant::now();
    if let Err(reason) = runc::pause(root, &taken.container_id) {
        log::warn!("{reason}; using Docker's checkpoint API");
        return Ok(None);
    }
    let captured = match capture_rootfs(engine, &taken.container_id, rootfs_dir) {
        Ok(captured) => captured,
        Err(error) => {
            thaw("capturing the container's files failed");
            return Err(error);
        }
    };
    let work = taken.job.path().join("criu-work");
    match runc::checkpoint(root, &taken.container_id, images, &work, leave_running) {
        Ok(()) => {
            taken.checkpoint_path = "runc";
            taken.stopped = !leave_running;
            if leave_running {
                // CRIU leaves a frozen container frozen.
                thaw("the checkpoint was taken");
            }
            taken.frozen_secs = seconds_since(frozen);
            Ok(Some(captured))
        }
        Err(reason) => {
            thaw("the checkpoint failed");
            let running = engine.inspect_container(&taken.container_id).is_ok_and(|i| i.state.running);
            if !running {
                return Err(Error::new(Kind::Criu, format!("CRIU could not checkpoint '{}': {reason}", taken.name)));
            }
            log::warn!("{reason}; trying Docker's checkpoint API");
            let _ = fs::remove_dir_all(images);
            let _ = fs::remove_dir_all(rootfs_dir);
            Ok(None)
        }
    }
}

fn take_commit(engine: &Engine, taken: &mut Taken, leave_running: bool) -> Result<()> {
    if !leave_running {
        log::info!("stopping {}", taken.name);
        engine.stop_container(&taken.container_id, 10)?;
        taken.stopped = true;
    }
    let repo = format!("ferry-commit/{}", taken.name);
    let tag = host::unix_now().to_string();
    let reference = format!("{repo}:{tag}");
    log::info!("committing {} as {reference}", taken.name);
    let image_id = engine.commit(&taken.container_id, &repo, &tag, leave_running)?;
    let image_path = taken.job.path().join(payload::IMAGE_ENTRY);
    let saved = (|| {
        let mut image_file =
            File::create(&image_path).map_err(|e| io_error(format!("cannot write {}", image_path.display()), e))?;
        io::copy(&mut engine.image_save(&[&reference])?, &mut image_file)
            .map_err(|e| io_error("saving the committed image", e))?;
        Ok::<_, Error>(())
    })();
    // The committed image lives on in the payload; the source host need not keep it.
    if let Err(e) = engine.remove_image(&image_id) {
        log::warn!("could not remove the committed image {reference}: {e}");
    }
    saved?;
    taken.manifest.container.image_id = image_id;
    taken.manifest.container.image_tags = vec![reference];
    taken.files = vec![(payload::IMAGE_ENTRY.to_string(), image_path)];
    Ok(())
}

/// The manifest without entries: who the container is and where it comes from.
fn base_manifest(engine: &Engine, info: &Info, inspect: &ContainerInspect, mode: Mode) -> Result<Manifest> {
    let image = engine.inspect_image(&inspect.image)?;
    let decode = |what: &str, e: serde_json::Error| {
        Error::new(Kind::Failure, format!("container '{}': cannot read its {what}: {e}", inspect.short_name()))
    };
    Ok(Manifest {
        format: payload::FORMAT_VERSION,
        ferry_version: env!("CARGO_PKG_VERSION").into(),
        mode,
        created_unix: host::unix_now(),
        source: SourceHost {
            hostname: host::hostname(),
            arch: info.architecture.clone(),
            kernel: info.kernel_version.clone(),
            criu_version: host::criu_version().unwrap_or_default(),
            docker_version: info.server_version.clone(),
        },
        container: ContainerSpec {
            name: inspect.short_name().to_string(),
            image_id: image.id,
            image_tags: image.repo_tags.unwrap_or_default(),
            config: serde_json::from_value(inspect.config.clone()).map_err(|e| decode("config", e))?,
            host_config: serde_json::from_value(inspect.host_config.clone()).map_err(|e| decode("host config", e))?,
        },
        checkpoint_name: None,
        rootfs: RootfsChanges::default(),
        entries: Vec::new(),
        snapshot: None,
    })
}

/// The parts of `HostConfig` that ferry cannot recreate on another host.
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct Powers {
    privileged: bool,
    binds: Option<Vec<String>>,
    devices: Option<Vec<serde_json::Value>>,
    network_mode: String,
    pid_mode: String,
    ipc_mode: String,
    #[serde(rename = "UTSMode")]
    uts_mode: String,
    userns_mode: String,
    cap_add: Option<Vec<String>>,
}

/// Refuses, before anything is stopped, a container that needs more than a
/// payload may ask for. Names every reason at once.
pub(crate) fn refuse_uncarryable(inspect: &ContainerInspect) -> Result<()> {
    let powers: Powers = serde_json::from_value(inspect.host_config.clone()).unwrap_or_default();
    let mut reasons = Vec::new();
    if powers.privileged {
        reasons.push("it runs privileged".to_string());
    }
    for bind in powers.binds.iter().flatten() {
        reasons.push(format!("it has the bind mount {bind}"));
    }
    for mount in &inspect.mounts {
        match mount.kind.as_str() {
            "bind" if !reasons.iter().any(|r| r.contains(&mount.destination)) => {
                reasons.push(format!("it has a bind mount at {}", mount.destination))
            }
            "volume" => reasons.push(format!(
                "it uses the volume '{}' at {} (ferry does not carry volume contents: copy them to the peer \
                 yourself or keep the data in the container's filesystem)",
                mount.name, mount.destination
            )),
            _ => {}
        }
    }
    if powers.devices.as_ref().is_some_and(|d| !d.is_empty()) {
        reasons.push("it has host devices".into());
    }
    for (what, mode) in [
        ("network", &powers.network_mode),
        ("PID namespace", &powers.pid_mode),
        ("IPC namespace", &powers.ipc_mode),
        ("UTS namespace", &powers.uts_mode),
        ("user namespace", &powers.userns_mode),
    ] {
        if mode == "host" || mode.starts_with("container:") {
            reasons.push(format!("it shares the {what} of {mode}"));
        }
    }
    if let Some(caps) = powers.cap_add.filter(|c| !c.is_empty()) {
        reasons.push(format!("it adds capabilities ({})", caps.join(", ")));
    }
    if reasons.is_empty() {
        return Ok(());
    }
    Err(Error::new(
        Kind::Refused,
        format!(
            "container '{}' cannot be carried: {} — ferry only moves what it can recreate safely on another host; \
             recreate the container without these",
            inspect.short_name(),
            reasons.join("; ")
        ),
    ))
}

fn require_experimental(info: &Info) -> Result<()> {
    if info.experimental_build {
        return Ok(());
    }
    Err(Error::new(
        Kind::Docker,
        "the Docker engine is not in experimental mode, so it has no checkpoints — put {\"experimental\": true} \
         in /etc/docker/daemon.json and restart dockerd",
    ))
}

/// A Docker error from a checkpoint or restore call, as a CRIU failure.
pub(crate) fn criu_error(container: &str, what: &str, error: engine::Error) -> Error {
    match error {
        engine::Error::Api { status, message, .. } if status != 404 && status != 409 => Error::new(
            Kind::Criu,
            format!(
                "CRIU could not {what} '{container}': {message} — `ferry doctor` checks CRIU; \
                 the CRIU log named above says why"
            ),
        ),
        other => Error::from(other).context(format!("{what} of '{container}'")),
    }
}

/// Saves the files the app added or changed, one archive per top-most path,
/// under `dir`; returns what the manifest says of them and the files to pack.
fn capture_rootfs(engine: &Engine, id: &str, dir: &Path) -> Result<(RootfsChanges, Vec<(String, PathBuf)>)> {
    let mut changes = engine.container_changes(id)?;
    changes.sort_by(|a, b| a.path.cmp(&b.path));
    let mut rootfs = RootfsChanges::default();
    let mut files = Vec::new();
    let mut taken: Vec<String> = Vec::new();
    for change in changes {
        let inside_taken = taken.iter().any(|t| change.path.starts_with(&format!("{t}/")));
        if inside_taken {
            continue;
        }
        match change.kind {
            CHANGE_DELETED => {
                rootfs.deleted.push(change.path);
                continue;
            }
            CHANGE_MODIFIED => {
                // A modified folder is listed because something inside it changed:
                // those children are listed too, and the folder itself is in the image.
                if engine.stat_path(id, &change.path)?.is_dir() {
                    continue;
                }
            }
            CHANGE_ADDED => {}
            other => log::warn!("unknown change kind {other} for {}", change.path),
        }
        if files.is_empty() {
            fs::create_dir_all(dir).map_err(|e| io_error(dir.display(), e))?;
        }
        let entry = format!("{}/{}.tar", payload::ROOTFS_DIR, files.len());
        let path = dir.join(format!("{}.tar", files.len()));
        let (_, mut archive) = engine.archive_get(id, &change.path)?;
        let mut file = File::create(&path).map_err(|e| io_error(path.display(), e))?;
        io::copy(&mut archive, &mut file).map_err(|e| io_error(format!("saving {} from the container", change.path), e))?;
        let target_dir = Path::new(&change.path).parent().unwrap_or(Path::new("/")).display().to_string();
        log::debug!("rootfs change {} → {entry}", change.path);
        rootfs.archives.push(RootfsArchive { entry: entry.clone(), target_dir });
        files.push((entry, path));
        taken.push(change.path);
    }
    Ok((rootfs, files))
}

/// A payload file being written; removed unless kept, so a failed checkpoint
/// leaves no half payload that looks whole.
struct PartialFile(PathBuf);

impl PartialFile {
    fn keep(&mut self) -> PathBuf {
        std::mem::take(&mut self.0)
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.0.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inspect(host_config: serde_json::Value, mounts: serde_json::Value) -> ContainerInspect {
        serde_json::from_value(json!({
            "Id": "abc", "Name": "/web", "Image": "sha256:x",
            "State": {"Status": "running", "Running": true},
            "Config": {}, "HostConfig": host_config, "Mounts": mounts,
        }))
        .unwrap()
    }

    #[test]
    fn plain_containers_are_carried() {
        let plain = inspect(json!({"NetworkMode": "default", "Memory": 134217728}), json!([]));
        refuse_uncarryable(&plain).unwrap();
    }

    #[test]
    fn every_power_is_named_in_one_refusal() {
        let powerful = inspect(
            json!({"Privileged": true, "Devices": [{"PathOnHost": "/dev/ttyUSB0"}], "PidMode": "host",
                   "IpcMode": "container:db", "CapAdd": ["SYS_ADMIN"]}),
            json!([{"Type": "volume", "Name": "pgdata", "Destination": "/var/lib/postgresql"}]),
        );
        let error = refuse_uncarryable(&powerful).unwrap_err();
        assert_eq!(error.kind, Kind::Refused);
        for reason in ["runs privileged", "host devices", "PID namespace of host", "IPC namespace of container:db",
                       "SYS_ADMIN", "volume 'pgdata' at /var/lib/postgresql"] {
            assert!(error.message.contains(reason), "{reason:?} missing from: {}", error.message);
        }
    }
}
