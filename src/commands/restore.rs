//! `ferry restore`: a payload → a new running container, carrying on where the
//! checkpointed one stopped.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use argh::FromArgs;
use serde_json::{json, Value};

use super::{human_bytes, print_report, seconds_since, Context};
use crate::board::Board;
use crate::engine::{self, Engine, Info};
use crate::error::{io_error, Error, Kind, Result};
use crate::host::JobDir;
use crate::payload::{self, Manifest, Mode};

#[derive(FromArgs, Debug)]
/// Restore a payload (a file, or - for stdin) into a new container.
#[argh(subcommand, name = "restore")]
pub(crate) struct Args {
    /// the payload file, or - for stdin
    #[argh(positional)]
    pub payload: String,
    /// name of the new container (default: the checkpointed container's name)
    #[argh(option)]
    pub name: Option<String>,
    /// cap the new container as this board profile says (a name from `ferry boards`, or a file)
    #[argh(option)]
    pub board: Option<String>,
    /// print the summary as one JSON object
    #[argh(switch)]
    pub json: bool,
}

/// How to restore, beside what the payload says.
#[derive(Debug, Clone, Default)]
pub(crate) struct Options<'a> {
    /// The new container's name, instead of the checkpointed one's.
    pub name: Option<&'a str>,
    /// Whether the fast, symlinked placement may be tried.
    pub fast: bool,
    /// Caps to apply to the new container instead of the payload's.
    pub board: Option<&'a Board>,
    /// Refuse a payload that unpacks to more than this (an agent's spool).
    pub max_raw_bytes: Option<u64>,
}

/// What a restore did and how long each part took.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Report {
    pub container: String,
    pub id: String,
    pub mode: String,
    /// Receiving, checking and unpacking the payload.
    pub unpack_secs: f64,
    /// Creating the container until it runs.
    pub restore_secs: f64,
    pub raw_bytes: u64,
    pub compressed_bytes: u64,
    /// ferry's own peak RSS (on an agent: since the agent started).
    #[serde(default)]
    pub peak_rss_kib: u64,
}

pub(crate) fn run(context: &Context, args: Args) -> Result<()> {
    let engine = context.engine()?;
    let input: Box<dyn Read> = if args.payload == "-" || args.payload == "/dev/stdin" {
        Box::new(io::stdin().lock())
    } else {
        let file = File::open(&args.payload).map_err(|e| {
            let kind = if e.kind() == io::ErrorKind::NotFound { Kind::NotFound } else { Kind::Io };
            Error::new(kind, format!("cannot read the payload {}: {e}", args.payload))
        })?;
        Box::new(file)
    };
    let tuning = context.tuning(args.board.as_deref())?;
    let options = Options { name: args.name.as_deref(), fast: context.fast, board: tuning.board.as_ref(), max_raw_bytes: None };
    let input = BufReader::with_capacity(tuning.io_buffer, input);
    let report = restore_from(&engine, &tuning.work_dir, "restore", input, &options)?;
    let line = format!(
        "restored {} ({}) as {}: unpack {:.2}s, restore {:.2}s, {} raw, {} compressed",
        report.container,
        report.mode,
        &report.id[..12.min(report.id.len())],
        report.unpack_secs,
        report.restore_secs,
        human_bytes(report.raw_bytes),
        human_bytes(report.compressed_bytes)
    );
    let json = args.json.then(|| json!(report));
    print_report(&line, json.as_ref(), false);
    Ok(())
}

/// Unpacks a payload stream into a `label-*` folder of the work dir, verifies
/// it whole, then restores it. Shared by `restore`, `bench` and the agent's
/// `/v1/restore`.
pub(crate) fn restore_from(
    engine: &Engine,
    work_dir: &Path,
    label: &str,
    input: impl Read,
    options: &Options<'_>,
) -> Result<Report> {
    let info = engine.info()?;
    let job = JobDir::reserve(work_dir, label)
        .map_err(|e| io_error(format!("cannot use the work dir {}", work_dir.display()), e))?;
    let started = Instant::now();
    let unpacked = payload::unpack(input, job.path(), &info.architecture, options.max_raw_bytes)?;
    let unpack_secs = seconds_since(started);
    let mut report = restore_unpacked(engine, &info, job.path(), &unpacked.manifest, options)?;
    report.unpack_secs = unpack_secs;
    report.raw_bytes = unpacked.raw_bytes;
    report.compressed_bytes = unpacked.compressed_bytes;
    report.peak_rss_kib = crate::host::peak_rss_kib();
    Ok(report)
}

/// Creates and starts a container from a verified, unpacked payload in `dir`.
/// Whatever fails after the container is created, the container is removed.
pub(crate) fn restore_unpacked(
    engine: &Engine,
    info: &Info,
    dir: &Path,
    manifest: &Manifest,
    options: &Options<'_>,
) -> Result<Report> {
    let spec = &manifest.container;
    let name = options.name.unwrap_or(&spec.name);
    let fast = options.fast;
    let started = Instant::now();
    match manifest.mode {
        Mode::Criu if !info.experimental_build => {
            return Err(Error::new(
                Kind::Docker,
                "the Docker engine is not in experimental mode, so it cannot restore checkpoints — put \
                 {\"experimental\": true} in /etc/docker/daemon.json and restart dockerd",
            ));
        }
        Mode::Criu => require_image(engine, manifest)?,
        Mode::Commit => {
            let image_path = dir.join(payload::IMAGE_ENTRY);
            let mut image = File::open(&image_path).map_err(|e| io_error(image_path.display(), e))?;
            log::info!("loading the committed image {}", spec.image_tags.join(", "));
            engine.image_load(&mut image)?;
            require_image(engine, manifest)?;
        }
    }

    let mut body = serde_json::to_value(&spec.config).map_err(|e| Error::new(Kind::Failure, e.to_string()))?;
    body["Image"] = Value::String(spec.image_id.clone());
    let mut limits = spec.host_config.clone();
    if let Some(board) = options.board {
        log::info!("capping {name} as board {} says: {} MiB, {} CPUs", board.name, board.memory_mib, board.cpus);
        board.apply(&mut limits);
    }
    body["HostConfig"] = serde_json::to_value(&limits).map_err(|e| Error::new(Kind::Failure, e.to_string()))?;
    let id = engine.create_container(name, &body).map_err(|e| {
        if e.status() == Some(409) {
            Error::new(
                Kind::Refused,
                format!("a container named '{name}' already exists on this host — pass --name NEW or remove it"),
            )
        } else {
            Error::from(e).context(format!("creating container '{name}'"))
        }
    })?;
    let created = CreatedContainer { engine, id: id.clone(), armed: true };
    log::info!("created {name} ({})", &id[..12.min(id.len())]);

    apply_rootfs(engine, info, &id, dir, manifest)?;
    match manifest.mode {
        Mode::Criu => {
            let checkpoint_name = manifest.checkpoint_name.as_deref().unwrap_or(super::checkpoint::CHECKPOINT_NAME);
            start_from_checkpoint(engine, info, &id, &dir.join(payload::CHECKPOINT_DIR), checkpoint_name, fast)?;
        }
        Mode::Commit => engine.start_container(&id, None)?,
    }
    let state = engine.inspect_container(&id)?.state;
    if !state.running {
        return Err(Error::new(
            Kind::Criu,
            format!("'{name}' stopped right after it was restored (state: {}) — see `docker logs {name}`", state.status),
        ));
    }
    created.disarm();
    Ok(Report {
        container: name.to_string(),
        id,
        mode: match manifest.mode {
            Mode::Criu => "criu",
            Mode::Commit => "commit",
        }
        .into(),
        restore_secs: seconds_since(started),
        ..Report::default()
    })
}

fn require_image(engine: &Engine, manifest: &Manifest) -> Result<()> {
    let spec = &manifest.container;
    match engine.inspect_image(&spec.image_id) {
        Ok(_) => Ok(()),
        Err(e) if engine::is_not_found(&e) => Err(Error::new(
            Kind::NotFound,
            format!(
                "image {} ({}) is not on this host — load it first (`docker save` there, `docker load` here) \
                 or migrate with --ship-image",
                spec.image_id,
                if spec.image_tags.is_empty() { "untagged".to_string() } else { spec.image_tags.join(", ") }
            ),
        )),
        Err(e) => Err(e.into()),
    }
}

/// Puts the app's own files back, and deletes what it had deleted.
fn apply_rootfs(engine: &Engine, info: &Info, id: &str, dir: &Path, manifest: &Manifest) -> Result<()> {
    for archive in &manifest.rootfs.archives {
        let path = dir.join(&archive.entry);
        let mut file = File::open(&path).map_err(|e| io_error(path.display(), e))?;
        engine
            .archive_put(id, &archive.target_dir, &mut file)
            .map_err(|e| Error::from(e).context(format!("putting back the app's files in {}", archive.target_dir)))?;
    }
    if manifest.rootfs.deleted.is_empty() {
        return Ok(());
    }
    // Docker's API cannot delete a file in a container that is not running:
    // write overlayfs whiteouts (0:0 character devices) into its upper layer.
    let inspect = engine.inspect_container(id)?;
    let upper = inspect.graph_driver.data.as_ref().and_then(|d| d.get("UpperDir")).cloned();
    let Some(upper) = upper.filter(|_| inspect.graph_driver.name == "overlay2") else {
        return Err(Error::new(
            Kind::Refused,
            format!(
                "the app deleted {} file(s) from its image, and this engine's storage driver '{}' gives ferry \
                 no way to delete them again — use overlay2",
                manifest.rootfs.deleted.len(),
                info.driver
            ),
        ));
    };
    for deleted in &manifest.rootfs.deleted {
        let whiteout = Path::new(&upper).join(deleted.trim_start_matches('/'));
        if let Some(parent) = whiteout.parent() {
            fs::create_dir_all(parent).map_err(|e| io_error(parent.display(), e))?;
        }
        mknod_whiteout(&whiteout).map_err(|e| io_error(format!("deleting {deleted} again"), e))?;
    }
    Ok(())
}

fn mknod_whiteout(path: &Path) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: c_path is NUL-terminated; a 0:0 character device is overlayfs' whiteout.
    if unsafe { libc::mknod(c_path.as_ptr(), libc::S_IFCHR | 0o000, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Starts container `id` from the CRIU images in `images`, proves that CRIU
/// really restored it, and cleans up every copy of the images the restore made.
///
/// Docker 20.10 answers 403 to `checkpoint-dir` on start, so the images go
/// into the container's own checkpoints folder. Docker then streams that
/// folder into containerd's content store, and containerd extracts it again:
/// two full copies of the app's memory, 2.1 s for 128 MiB here. The fast way
/// (`fast`) places the small image files there but each `pages-*.img` as a
/// relative symlink back into `images`: Docker's tar keeps the link, CRIU
/// follows it (an absolute link would be opened inside the container's root),
/// and the same restore takes 0.35 s. If the fast start fails it is retried
/// the portable way, with the files themselves.
pub(crate) fn start_from_checkpoint(engine: &Engine, info: &Info, id: &str, images: &Path, name: &str, fast: bool) -> Result<()> {
    let checkpoints = info.docker_root_dir.join("containers").join(id).join("checkpoints");
    let placed = checkpoints.join(name);
    fs::create_dir_all(&checkpoints).map_err(|e| io_error(checkpoints.display(), e))?;
    let clear = |placed: &Path| match fs::remove_dir_all(placed) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error(placed.display(), e)),
        _ => Ok(()),
    };
    clear(&placed)?;
    if fast {
        let linked = place_linked(images, &placed)
            .map_err(|e| io_error(format!("placing the checkpoint in {}", placed.display()), e))
            .and_then(|()| start_placed(engine, info, id, name, &placed));
        match linked {
            Ok(()) => return Ok(()),
            Err(error) => {
                log::warn!("fast restore failed ({error}); retrying the portable way");
                clear(&placed)?;
            }
        }
    }
    crate::host::move_dir(images, &placed)
        .map_err(|e| io_error(format!("placing the checkpoint in {}", placed.display()), e))?;
    start_placed(engine, info, id, name, &placed)
}

/// Copies the small image files into `placed` and links each `pages-*.img`
/// back to `images` by a relative path that climbs to `/` from any depth.
fn place_linked(images: &Path, placed: &Path) -> io::Result<()> {
    let images = fs::canonicalize(images)?;
    let climb = "../".repeat(32);
    fs::create_dir(placed)?;
    for entry in fs::read_dir(&images)? {
        let entry = entry?;
        let file_name = entry.file_name();
        let target = placed.join(&file_name);
        if !entry.file_type()?.is_file() {
            return Err(io::Error::other(format!("{}: not a plain file", entry.path().display())));
        }
        if file_name.to_string_lossy().starts_with("pages-") {
            let absolute = images.join(&file_name);
            let relative = format!("{climb}{}", absolute.to_string_lossy().trim_start_matches('/'));
            std::os::unix::fs::symlink(relative, &target)?;
        } else {
            fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Starts from the checkpoint already in `placed`, then removes `placed` and
/// containerd's extraction of it.
fn start_placed(engine: &Engine, info: &Info, id: &str, name: &str, placed: &Path) -> Result<()> {
    let leaks_before = containerd_extractions();
    // Filesystem timestamps are coarser than SystemTime: allow a second.
    let since = SystemTime::now() - Duration::from_secs(1);
    let started = engine.start_container(id, Some(name));
    // containerd extracts the checkpoint into $TMPDIR/ctrd-checkpoint* for every
    // restore, failed ones too, and never deletes it (containerd issue 10166).
    remove_extractions(&leaks_before, placed);
    // The images were read: remove them, through Docker when it knows them.
    let removed = match engine.checkpoint_delete(id, name) {
        Ok(()) => Ok(()),
        Err(_) => fs::remove_dir_all(placed),
    };
    started.map_err(|e| super::checkpoint::criu_error(&id[..12.min(id.len())], "restore", e))?;
    if let Err(e) = removed {
        log::warn!("could not remove the used checkpoint {}: {e}", placed.display());
    }
    if restore_log(&info.docker_root_dir, id, since).is_none() {
        return Err(Error::new(
            Kind::Criu,
            format!(
                "container {} started but CRIU left no restore log: Docker cold-started it instead of restoring \
                 its state",
                &id[..12.min(id.len())]
            ),
        ));
    }
    Ok(())
}

/// CRIU's restore.log for a running container, if written at or after `since`.
///
/// containerd's runc shim gives CRIU the task's work dir, under the engine's
/// data root: `<DockerRootDir>/containerd/daemon/io.containerd.runtime.v2.task/moby/<id>`
/// (Docker ≥ 20.10 with its own containerd), or under a system containerd's root.
pub(crate) fn restore_log(docker_root: &Path, id: &str, since: SystemTime) -> Option<PathBuf> {
    let candidates = [
        docker_root.join("containerd/daemon/io.containerd.runtime.v2.task/moby").join(id),
        PathBuf::from("/var/lib/containerd/io.containerd.runtime.v2.task/moby").join(id),
    ];
    candidates
        .iter()
        .map(|dir| dir.join("restore.log"))
        .find(|log| fs::metadata(log).and_then(|m| m.modified()).is_ok_and(|written| written >= since))
}

fn find_file(dir: &Path, name: &str, depth: u32) -> Option<PathBuf> {
    let entries = fs::read_dir(dir).ok()?;
    let mut subdirs = Vec::new();
    for entry in entries.flatten() {
        if entry.file_name() == name {
            return Some(entry.path());
        }
        if depth > 0 && entry.file_type().is_ok_and(|t| t.is_dir()) {
            subdirs.push(entry.path());
        }
    }
    subdirs.into_iter().find_map(|d| find_file(&d, name, depth - 1))
}

fn extraction_root() -> PathBuf {
    std::env::var_os("TMPDIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp"))
}

pub(crate) fn containerd_extractions() -> BTreeSet<PathBuf> {
    let Ok(entries) = fs::read_dir(extraction_root()) else { return BTreeSet::new() };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("ctrd-checkpoint"))
        .map(|e| e.path())
        .collect()
}

/// Removes the extractions that appeared since `before` and hold our
/// checkpoint (same inventory.img), leaving other restores' alone.
pub(crate) fn remove_extractions(before: &BTreeSet<PathBuf>, ours: &Path) {
    let Ok(inventory) = fs::read(ours.join("inventory.img")) else { return };
    for dir in containerd_extractions().difference(before) {
        let same = find_file(dir, "inventory.img", 2).and_then(|p| fs::read(p).ok()).is_some_and(|c| c == inventory);
        if same {
            log::debug!("removing containerd's leftover {}", dir.display());
            if let Err(e) = fs::remove_dir_all(dir) {
                log::warn!("could not remove containerd's leftover {}: {e}", dir.display());
            }
        }
    }
}

/// A container ferry created; removed on drop unless the restore succeeded.
struct CreatedContainer<'a> {
    engine: &'a Engine,
    id: String,
    armed: bool,
}

impl CreatedContainer<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for CreatedContainer<'_> {
    fn drop(&mut self) {
        if self.armed {
            log::info!("removing the half-restored container {}", &self.id[..12.min(self.id.len())]);
            if let Err(e) = self.engine.remove_container(&self.id, true) {
                log::warn!("could not remove container {}: {e}", self.id);
            }
        }
    }
}
