//! An unpacked, verified payload → a new container, running where the
//! checkpointed one stopped. Whatever fails, no container is left behind.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::time::Instant;

use serde::Serialize;
use serde_json::Value;

use super::{cgroup, confinement, preflight, resume, rootfs, CHECKPOINT_NAME};
use crate::board::Board;
use crate::engine::{self, Engine, Info};
use crate::error::{io_error, Error, Kind, Result};
use crate::host::JobDir;
use crate::payload::{self, images, Manifest, Mode};
use crate::units::{seconds_since, short_id};

/// How to restore, beside what the payload says.
#[derive(Clone)]
pub(crate) struct Options<'a> {
    /// The new container's name, instead of the checkpointed one's.
    pub name: Option<&'a str>,
    /// Whether the fast, symlinked placement may be tried.
    pub fast: bool,
    /// Caps to apply to the new container instead of the payload's.
    pub board: Option<&'a Board>,
    /// Refuse a payload that unpacks to more than this, and say why the
    /// limit is what it is (an agent's spool and --max-payload).
    pub size_limit: Option<SizeLimit>,
    /// Restore even if the source's page size or CPU features say this host
    /// cannot run it (for experts: the restore may fail, or the app crash).
    pub allow_host_mismatch: bool,
    /// Decides whether the payload's seal (or lack of one) is acceptable.
    pub verify: &'a dyn payload::Verify,
}

impl std::fmt::Debug for Options<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("name", &self.name)
            .field("fast", &self.fast)
            .field("board", &self.board)
            .field("size_limit", &self.size_limit)
            .field("allow_host_mismatch", &self.allow_host_mismatch)
            .finish_non_exhaustive()
    }
}

/// The payload's own tests check the format, not trust.
#[cfg(test)]
impl Default for Options<'_> {
    fn default() -> Self {
        Options { name: None, fast: false, board: None, size_limit: None, allow_host_mismatch: false, verify: &payload::Unchecked }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct SizeLimit {
    pub bytes: u64,
    /// Where the limit comes from, for the person who meets it.
    pub why: String,
}

/// What a restore did and how long each part took.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Restored {
    pub container: String,
    pub id: String,
    pub mode: &'static str,
    /// Receiving, checking and unpacking the payload.
    pub unpack_secs: f64,
    /// Creating the container until it runs.
    pub restore_secs: f64,
    pub raw_bytes: u64,
    pub compressed_bytes: u64,
    /// ferry's own peak RSS (on an agent: since the agent started).
    pub peak_rss_kib: u64,
    /// CRIU's own restore time, from the statistics it left (0: none).
    pub criu_restore_secs: f64,
}

/// Unpacks a payload stream into a `label-*` folder of the work dir, verifies
/// it whole, then restores it. Shared by `restore`, `bench` and the agent.
pub(crate) fn restore_from(
    engine: &Engine,
    work_dir: &Path,
    label: &str,
    input: impl Read,
    options: &Options<'_>,
) -> Result<Restored> {
    let info = engine.info()?;
    let job = JobDir::reserve(work_dir, label)
        .map_err(|e| io_error(format!("cannot use the work dir {}", work_dir.display()), e))?;
    let started = Instant::now();
    let unpacked = unpack_verified(input, job.path(), &info, options, &payload::Receive::default())?;
    let unpack_secs = seconds_since(started);
    let mut restored = restore_unpacked(engine, &info, job.path(), &unpacked.manifest, options)?;
    restored.unpack_secs = unpack_secs;
    restored.raw_bytes = unpacked.raw_bytes;
    restored.compressed_bytes = unpacked.compressed_bytes;
    restored.peak_rss_kib = crate::host::peak_rss_kib();
    Ok(restored)
}

/// Unpacks a payload into `dest` as `options` allow (its seal, its size),
/// every entry verified, deltas rebuilt from what `receive` offers; a
/// refusal for size names where the limit comes from.
pub(crate) fn unpack_verified(
    input: impl Read,
    dest: &Path,
    info: &Info,
    options: &Options<'_>,
    receive: &payload::Receive<'_>,
) -> Result<payload::Unpacked> {
    let limit = options.size_limit.as_ref().map(|l| l.bytes);
    let unpacked = payload::unpack_with(input, dest, &info.architecture, limit, options.verify, receive).map_err(|e| match (&e, &options.size_limit) {
        (payload::Error::TooLarge { .. }, Some(limit)) => Error::from(e).context(&limit.why),
        _ => Error::from(e),
    })?;
    if let Some(signer) = &unpacked.signer {
        log::info!("the payload is signed by {} ({})", signer.name, signer.fingerprint);
    }
    Ok(unpacked)
}

/// Creates and starts a container from a verified, unpacked payload in `dir`.
/// Whatever fails after the container is created, the container is removed.
pub(crate) fn restore_unpacked(
    engine: &Engine,
    info: &Info,
    dir: &Path,
    manifest: &Manifest,
    options: &Options<'_>,
) -> Result<Restored> {
    let started = Instant::now();
    let prepared = prepare(engine, info, dir, manifest, options)?;
    let mut restored = commit(engine, info, &prepared, options.fast)?;
    restored.restore_secs = seconds_since(started);
    Ok(restored)
}

/// A container created from a payload, its files put back, not started: the
/// first phase of a handover. `commit` starts it; `discard` removes it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub(crate) struct Prepared {
    pub container: String,
    pub id: String,
    pub mode: Mode,
    /// The unpacked payload, whose CRIU images the start reads.
    pub dir: std::path::PathBuf,
    pub checkpoint_name: String,
}

/// Creates the container a payload describes and puts the app's files back,
/// without starting it. Whatever fails, no container is left.
pub(crate) fn prepare(engine: &Engine, info: &Info, dir: &Path, manifest: &Manifest, options: &Options<'_>) -> Result<Prepared> {
    prepare_with(engine, info, dir, manifest, options, None)
}

/// A container created from a payload's leading manifest while the rest of
/// the payload still arrives, under a name of its own ([`early_name`]):
/// [`prepare_with`] renames it instead of creating one. Whatever fails, or if
/// it is dropped unused, it is removed.
pub(crate) struct Early<'a> {
    created: CreatedContainer<'a>,
    /// Whether the payload's archives of the app's files are in it.
    files_put: bool,
}

impl Early<'_> {
    /// Puts the app's files into the container as soon as their archives
    /// (which lead the payload) are whole in `dir`, while the app's memory
    /// still arrives. The container is never started unless the whole
    /// payload checks out; otherwise it goes, files and all. Best effort:
    /// on failure [`prepare_with`] puts them, and explains a failure again.
    pub(crate) fn put_files(&mut self, dir: &Path, manifest: &Manifest) {
        match rootfs::put_archives(self.created.engine, &self.created.id, dir, manifest) {
            Ok(()) => self.files_put = true,
            Err(e) => log::debug!("putting the app's files in early: {e}"),
        }
    }
}

/// The name of the container created early for the handover `migration`:
/// it cannot collide with an app's, and an agent that stopped while the
/// payload arrived finds it by this name when it starts again.
pub(crate) fn early_name(migration: &str) -> String {
    // The ledger's ids run to 129 characters (a fingerprint and the client's id).
    format!("ferry-prepare-{}", &blake3::hash(migration.as_bytes()).to_hex()[..16])
}

/// Creates the container a sealed leading manifest describes (criu mode), so
/// that creating it costs no downtime: it is only ever started by a commit,
/// after the whole payload was checked. Best effort: a failure here is met
/// again, and explained, by [`prepare_with`].
pub(crate) fn create_early<'a>(engine: &'a Engine, manifest: &Manifest, migration: &str, board: Option<&Board>) -> Option<Early<'a>> {
    if manifest.mode != Mode::Criu {
        return None;
    }
    create(engine, manifest, &early_name(migration), board)
        .inspect_err(|e| log::debug!("creating the container early: {e}"))
        .ok()
        .map(|created| Early { created, files_put: false })
}

/// [`prepare`], with the container created `early` if it was.
pub(crate) fn prepare_with(
    engine: &Engine,
    info: &Info,
    dir: &Path,
    manifest: &Manifest,
    options: &Options<'_>,
    early: Option<Early<'_>>,
) -> Result<Prepared> {
    let spec = &manifest.container;
    let name = options.name.unwrap_or(&spec.name);
    match manifest.mode {
        Mode::Criu => {
            preflight::require_experimental(info)?;
            if let Some(why) = manifest.source.cpu.cannot_run_on(&crate::host::cpu()) {
                if !options.allow_host_mismatch {
                    return Err(Error::new(
                        Kind::BadPayload,
                        format!("this host cannot run the payload of '{}': {why} — restore it on a host like its source", spec.name),
                    ));
                }
                log::warn!("restoring '{}' although {why} (--allow-host-mismatch)", spec.name);
            }
            // The images decide the restored process's powers, whatever the
            // container's config says: they must be within what it is granted.
            require_image(engine, manifest)?;
            // The filters the images hold are replaced by the ones this
            // host's engine installs; the filters an app added stay above.
            let here = confinement::of_new_containers(engine, info, &spec.image_id, dir)?;
            let images_dir = dir.join(payload::CHECKPOINT_DIR);
            let replaced = images::enforce_seccomp(&images_dir, &here.seccomp)?;
            log::debug!("seccomp.img: {replaced} filter(s) replaced by this host's ({})", here.seccomp);
            let allowed = granted(manifest).with_seccomp_reference(here.seccomp).with_lsm_label(here.lsm_label);
            images::check(&images_dir, &allowed)?;
        }
        Mode::Commit => {
            let image_path = dir.join(payload::IMAGE_ENTRY);
            let mut image = File::open(&image_path).map_err(|e| io_error(image_path.display(), e))?;
            log::info!("loading the committed image {}", spec.image_tags.join(", "));
            engine.image_load(&mut image)?;
            require_image(engine, manifest)?;
        }
    }

    let (created, files_put) = match early {
        Some(Early { created, files_put }) => {
            engine.rename_container(&created.id, name).map_err(|e| creating_error(name, e))?;
            (created, files_put)
        }
        None => (create(engine, manifest, name, options.board)?, false),
    };
    let id = created.id.clone();
    if manifest.mode == Mode::Criu {
        // The images name the source container's cgroup; on cgroup v2
        // nothing else moves the restored process into this one.
        cgroup::follow_new_container(engine, info, &id, &dir.join(payload::CHECKPOINT_DIR))?;
    }
    if files_put {
        rootfs::delete_again(engine, info, &id, manifest)?;
    } else {
        rootfs::apply(engine, info, &id, dir, manifest)?;
    }
    created.disarm();
    Ok(Prepared {
        container: name.to_string(),
        id,
        mode: manifest.mode,
        dir: dir.to_path_buf(),
        checkpoint_name: manifest.checkpoint_name.clone().unwrap_or_else(|| CHECKPOINT_NAME.into()),
    })
}

/// Creates, not started, the container `manifest` describes, named `name`,
/// capped as `board` says if given.
fn create<'a>(engine: &'a Engine, manifest: &Manifest, name: &str, board: Option<&Board>) -> Result<CreatedContainer<'a>> {
    let spec = &manifest.container;
    let mut body = serde_json::to_value(&spec.config).map_err(|e| Error::new(Kind::Failure, e.to_string()))?;
    body["Image"] = Value::String(spec.image_id.clone());
    let mut limits = spec.host_config.clone();
    if let Some(board) = board {
        log::info!("capping {name} as board {} says: {} MiB, {} CPUs", board.name, board.memory_mib, board.cpus);
        board.apply(&mut limits);
    }
    body["HostConfig"] = serde_json::to_value(&limits).map_err(|e| Error::new(Kind::Failure, e.to_string()))?;
    let id = engine.create_container(name, &body).map_err(|e| creating_error(name, e))?;
    log::info!("created {name} ({})", short_id(&id));
    Ok(CreatedContainer { engine, id, armed: true })
}

fn creating_error(name: &str, e: crate::engine::Error) -> Error {
    if e.status() == Some(409) {
        Error::new(Kind::Refused, format!("a container named '{name}' already exists on this host — pass --name NEW or remove it"))
    } else {
        Error::from(e).context(format!("creating container '{name}'"))
    }
}

/// Starts a prepared container (from its CRIU images in criu mode) and checks
/// that it runs. If it does not, the container is removed.
pub(crate) fn commit(engine: &Engine, info: &Info, prepared: &Prepared, fast: bool) -> Result<Restored> {
    let started = Instant::now();
    let created = CreatedContainer { engine, id: prepared.id.clone(), armed: true };
    let name = &prepared.container;
    match prepared.mode {
        Mode::Criu => {
            let images = prepared.dir.join(payload::CHECKPOINT_DIR);
            resume::start_from_checkpoint(engine, info, &prepared.id, &images, &prepared.checkpoint_name, fast)?;
        }
        Mode::Commit => engine.start_container(&prepared.id, None)?,
    }
    let state = engine.inspect_container(&prepared.id)?.state;
    if !state.running {
        return Err(Error::new(
            Kind::Criu,
            format!("'{name}' stopped right after it was restored (state: {}) — see `docker logs {name}`", state.status),
        ));
    }
    created.disarm();
    let [task_dir, _] = resume::task_dirs(&info.docker_root_dir, &prepared.id);
    let criu_restore_secs = crate::bench::criu_stats::read_restore(&task_dir.join("stats-restore"))
        .filter(|_| prepared.mode == Mode::Criu)
        .map_or(0.0, |s| s.restore_time_us as f64 / 1e6);
    Ok(Restored {
        container: name.clone(),
        id: prepared.id.clone(),
        mode: prepared.mode.as_str(),
        restore_secs: seconds_since(started),
        criu_restore_secs,
        ..Restored::default()
    })
}

/// Removes a prepared container that will not be started.
pub(crate) fn discard(engine: &Engine, prepared: &Prepared) -> Result<()> {
    match engine.remove_container(&prepared.id, true) {
        Err(e) if engine::is_not_found(&e) => Ok(()),
        other => Ok(other?),
    }
}

/// What the container created from `manifest` is granted: Docker's default
/// capabilities and seccomp filter mode (the manifest carries no CapAdd and
/// no security options: checkpoint refuses them), its tmpfs mounts, and its
/// terminal. The caller adds the seccomp programs and LSM label this host
/// gives a container.
fn granted(manifest: &Manifest) -> images::Allowed {
    let spec = &manifest.container;
    let tmpfs = spec.host_config.tmpfs.iter().flat_map(|t| t.keys().map(String::as_str));
    let allowed = images::Allowed::docker_default().with_tmpfs(tmpfs);
    if spec.config.tty { allowed.with_tty() } else { allowed }
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
            log::info!("removing the half-restored container {}", short_id(&self.id));
            if let Err(e) = self.engine.remove_container(&self.id, true) {
                log::warn!("could not remove container {}: {e}", self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests;
