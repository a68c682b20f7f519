//! A running container → a checkpoint on disk, ready to pack: CRIU images and
//! the app's changed files (criu mode) or a committed image (commit mode).
//! Should the checkpoint not be delivered, [`Taken::give_back`] starts the
//! container again here.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::preflight::Carryable;
use super::{criu_error, resume, rootfs, CHECKPOINT_NAME};
use crate::board::Tuning;
use crate::engine::{ContainerInspect, Engine, Info};
use crate::error::{io_error, Error, Kind, Result};
use crate::host::{self, JobDir};
use crate::payload::{self, ContainerSpec, Manifest, Mode, RootfsChanges, SourceHost};
use crate::runc;
use crate::units::seconds_since;

/// How to take a checkpoint, beside the container and its mode.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options<'a> {
    /// Buffers, lz4 block size and the work dir the checkpoint goes into.
    pub tuning: &'a Tuning,
    /// Keep the container running after the checkpoint (a snapshot).
    pub leave_running: bool,
    /// Whether the fast paths (runc, symlinked restore) may be tried.
    pub fast: bool,
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
    lz4_block: lz4_flex::frame::BlockSize,
    job: JobDir,
}

impl Taken {
    /// CRIU's dump statistics, when runc dumped it (Docker keeps its own).
    pub(crate) fn stats_dump(&self) -> PathBuf {
        self.job.path().join("criu-work").join("stats-dump")
    }

    /// The job folder holding the checkpoint (what [`start_again`] takes).
    pub(crate) fn job_path(&self) -> &Path {
        self.job.path()
    }

    /// Leaves the checkpoint on disk for `ferry recover` and returns its folder.
    pub(crate) fn keep_for_recovery(self) -> PathBuf {
        self.job.keep()
    }

    /// Streams the payload into `sink`, sealed by `signer` when given; as a
    /// delta against the receiver's blocks when it `offer`s some; in one pass
    /// (format 5) if the receiver reads it (`one_pass`).
    pub(crate) fn pack_into(
        &mut self,
        sink: impl Write,
        signer: Option<&dyn payload::Sign>,
        offer: Option<(&payload::delta::Offer, &str)>,
        one_pass: bool,
    ) -> Result<payload::PackStats> {
        log::info!("packing {} files", self.files.len());
        let layout = payload::Layout { block: self.lz4_block, signer, offer, one_pass };
        let stats = payload::pack(&mut self.manifest, &self.files, sink, layout)?;
        if stats.delta_entries > 0 {
            log::info!(
                "{} files went as deltas against the peer's blocks: {} of payload for {} of checkpoint",
                stats.delta_entries,
                crate::units::human_bytes(stats.compressed_bytes),
                crate::units::human_bytes(stats.raw_bytes)
            );
        }
        Ok(stats)
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
            Mode::Criu => start_again(engine, info, &self.container_id, self.job.path(), self.fast),
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

/// Starts a stopped container again from the criu-mode checkpoint in the job
/// folder `job_dir`: the app carries on where it was frozen.
pub(crate) fn start_again(engine: &Engine, info: &Info, container_id: &str, job_dir: &Path, fast: bool) -> Result<()> {
    resume::start_from_checkpoint(engine, info, container_id, &job_dir.join(CHECKPOINT_NAME), CHECKPOINT_NAME, fast)
}

/// Checkpoints a container that [`super::preflight::check`] cleared, into a
/// job folder under the work dir. Without `leave_running` it is stopped.
pub(crate) fn take(engine: &Engine, info: &Info, container: &Carryable, options: &Options<'_>) -> Result<Taken> {
    let inspect = &container.inspect;
    let manifest = base_manifest(engine, info, inspect, container.mode)?;
    let work_dir = &options.tuning.work_dir;
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
        fast: options.fast,
        lz4_block: options.tuning.lz4_block,
        job,
    };
    let started = Instant::now();
    let result = match container.mode {
        Mode::Criu => take_criu(engine, &mut taken, options.leave_running, options.fast),
        Mode::Commit => take_commit(engine, &mut taken, options.leave_running),
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
            rootfs::capture(engine, &taken.container_id, &rootfs_dir)?
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

/// The fast path (see `runc.rs`): freeze the container, then capture its
/// files (while Docker still has them mounted: a stopped container's files
/// cost a mount per API call, 0.1 s here) as runc dumps the frozen processes.
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
    // The files are captured while CRIU dumps: both only read the frozen
    // container, and each keeps a core busy (Docker's archive API runs a
    // helper process; runc and CRIU the other).
    let work = taken.job.path().join("criu-work");
    let id = taken.container_id.as_str();
    let (captured, dumped) = std::thread::scope(|scope| {
        let capturing = scope.spawn(|| rootfs::capture(engine, id, rootfs_dir));
        let dumped = runc::checkpoint(root, id, images, &work, leave_running);
        let captured = capturing
            .join()
            .unwrap_or_else(|_| Err(Error::new(Kind::Failure, "the thread capturing the container's files panicked")));
        (captured, dumped)
    });
    match (dumped, captured) {
        (Ok(()), captured) => {
            taken.checkpoint_path = "runc";
            taken.stopped = !leave_running;
            if leave_running {
                // CRIU leaves a frozen container frozen.
                thaw("the checkpoint was taken");
            }
            taken.frozen_secs = seconds_since(frozen);
            // Files not captured: the caller starts the app again from
            // this checkpoint (it was stopped) and says why.
            captured.map(Some)
        }
        (Err(reason), captured) => {
            thaw("the checkpoint failed");
            captured?;
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
            cpu: host::cpu(),
            cgroup_version: host::cgroup_version(),
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
        delta: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migration::preflight;
    use crate::testing::{api_path, info_answer, version_answer, FakeDocker, TempDir};

    const ID: &str = "0123456789abcdef";
    const COMMITTED: &str = "sha256:c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0";

    /// A running `web` on image `sha256:app`; commit answers `sha256:committed`.
    fn engine(root: std::path::PathBuf) -> FakeDocker {
        FakeDocker::start("commit", move |method, path| match (method, api_path(path)) {
            ("GET", "/version") => (200, version_answer("1.41")),
            ("GET", "/info") => (200, info_answer(&root)),
            ("GET", "/containers/web/json") => (
                200,
                serde_json::json!({"Id": ID, "Name": "/web", "Image": "sha256:app", "State": {"Status": "running", "Running": true},
                                   "Config": {"Cmd": ["/counter"]}, "HostConfig": {"Memory": 134217728}, "Mounts": []})
                .to_string(),
            ),
            ("GET", p) if p.starts_with("/images/sha256") => (200, r#"{"Id":"sha256:app","RepoTags":["app:1"]}"#.into()),
            ("POST", p) if p.starts_with(&format!("/containers/{ID}/stop")) => (204, String::new()),
            ("POST", p) if p.starts_with("/commit?") => (201, format!(r#"{{"Id":"{COMMITTED}"}}"#)),
            ("GET", p) if p.starts_with("/images/get?") => (200, "the saved image".into()),
            ("DELETE", p) if p.starts_with("/images/") => (200, "[]".into()),
            _ => (404, format!(r#"{{"message":"the fake has no {method} {path}"}}"#)),
        })
    }

    #[test]
    fn commit_mode_stops_commits_saves_and_packs_the_image() {
        let work = TempDir::new("commit-work");
        let fake = engine(work.path().to_path_buf());
        let engine = fake.engine();
        let info = engine.info().unwrap();
        let tuning = Tuning::new(None, Some(work.path()), work.path());
        let carryable = preflight::check(&engine, &info, "web", Mode::Commit).unwrap();
        let options = Options { tuning: &tuning, leave_running: false, fast: true };
        let mut taken = take(&engine, &info, &carryable, &options).unwrap();

        let lines = fake.lines();
        let stop = lines.iter().position(|l| l.contains("/stop")).expect("the app was stopped");
        let commit = lines.iter().position(|l| l.contains("/commit?") && l.contains("repo=ferry-commit%2Fweb")).expect("committed");
        assert!(stop < commit, "stopped before the commit: {lines:?}");
        assert!(lines.iter().any(|l| l.starts_with("DELETE /v1.41/images/sha256%3Ac0c0")), "the committed image is not kept: {lines:?}");
        assert_eq!(taken.manifest.mode, Mode::Commit);
        assert_eq!(taken.manifest.container.image_id, COMMITTED);
        assert!(taken.manifest.container.image_tags[0].starts_with("ferry-commit/web:"));

        let mut packed = Vec::new();
        taken.pack_into(&mut packed, None, None, true).unwrap();
        let dest = work.path().join("unpacked");
        let unpacked = payload::unpack(packed.as_slice(), &dest, "x86_64", None, &payload::Unchecked).unwrap();
        assert_eq!(unpacked.manifest.container.config.cmd, Some(vec!["/counter".to_string()]));
        assert_eq!(std::fs::read(dest.join(payload::IMAGE_ENTRY)).unwrap(), b"the saved image");
    }
}
