//! The restored process's cgroup on cgroup v2 (issue 10): the checkpoint's
//! cgroup paths are moved to the new container's cgroup before CRIU reads
//! them.
//!
//! CRIU restores tasks into the cgroups `cgroup.img` names, which are the
//! source container's. On cgroup v1 runc hands CRIU the new container's
//! cgroups as cgroup roots (`criuApplyCgroups`) and CRIU rewrites the image
//! with them; on v2 none reaches CRIU (runc skips the step there, or names
//! the unified hierarchy in a way CRIU matches to no controller), so the
//! process lands in a cgroup named after the source container, outside its
//! new container's memory cap, and neither the freezer nor CRIU can take
//! that container again. Moving the process
//! afterwards would not be the same: on v2 the memory it already holds
//! stays charged to the cgroup it was restored into. So the image is
//! rewritten before the start, as runc's own rewrite would have done.

use std::path::Path;

use crate::engine::{Engine, Info};
use crate::error::{Error, Kind, Result};
use crate::payload::images;

/// Rewrites the checkpoint in `images_dir` for the created container `id`
/// when the engine runs on cgroup v2; on v1 the images are left alone.
pub(crate) fn follow_new_container(engine: &Engine, info: &Info, id: &str, images_dir: &Path) -> Result<()> {
    if info.cgroup_version != "2" {
        return Ok(());
    }
    // The created container's, which is what runc reads; ferry sets none,
    // but an engine could.
    let inspect = engine.inspect_container(id)?;
    let parent = inspect.host_config.get("CgroupParent").and_then(|v| v.as_str()).unwrap_or("");
    let new_cgroup = container_cgroup(&info.cgroup_driver, id, parent)?;
    let moved = images::retarget(images_dir, &new_cgroup)
        .map_err(|e| Error::from(e).context("moving the checkpoint into the new container's cgroup"))?;
    log::debug!(
        "cgroup.img: {} member paths and {} cgroup folders moved from {} to {}",
        moved.members,
        moved.dirs,
        moved.old,
        moved.new
    );
    Ok(())
}

/// The cgroup (from the hierarchy root) Docker gives container `id`, as
/// moby's `WithCgroups` (`daemon/oci_linux.go`) names it and runc expands
/// it:
///
/// - systemd driver: `<parent>:docker:<id>` with `system.slice` by default;
///   runc expands the slice by its dashes (`a-b.slice` is
///   `/a.slice/a-b.slice`) and names the unit `docker-<id>.scope`.
/// - cgroupfs driver: `<parent>/<id>` with `/docker` by default.
///
/// The engine's own `--cgroup-parent` is not in `/info`; an engine set up
/// with one is not supported here.
pub(crate) fn container_cgroup(driver: &str, id: &str, cgroup_parent: &str) -> Result<String> {
    let refused = |why: String| Error::new(Kind::Refused, why);
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(refused(format!("container id {id:?} is not a Docker id")));
    }
    match driver {
        "systemd" => {
            let slice = if cgroup_parent.is_empty() { "system.slice" } else { cgroup_parent };
            let slice_path = expand_slice(slice).ok_or_else(|| {
                refused(format!("cgroup parent {slice:?} is not a systemd slice name (such as my-app.slice)"))
            })?;
            Ok(format!("{}/docker-{id}.scope", slice_path.trim_end_matches('/')))
        }
        "cgroupfs" => {
            let parent = if cgroup_parent.is_empty() { "/docker" } else { cgroup_parent };
            // runc places a relative path under its own process's cgroup,
            // which ferry cannot see from here.
            if !parent.starts_with('/') {
                return Err(refused(format!(
                    "cgroup parent {parent:?} is relative: the new container's cgroup cannot be told"
                )));
            }
            let mut path = String::new();
            for part in parent.split('/').filter(|part| !part.is_empty() && *part != ".") {
                if part == ".." {
                    return Err(refused(format!("cgroup parent {parent:?} climbs with '..'")));
                }
                path.push('/');
                path.push_str(part);
            }
            Ok(format!("{path}/{id}"))
        }
        other => Err(refused(format!(
            "the engine's cgroup driver {other:?} is neither systemd nor cgroupfs: the new container's cgroup \
             cannot be told"
        ))),
    }
}

/// runc's `ExpandSlice`: `a-b-c.slice` → `/a.slice/a-b.slice/a-b-c.slice`,
/// `-.slice` → `/`. `None` for what systemd would refuse.
fn expand_slice(slice: &str) -> Option<String> {
    let name = slice.strip_suffix(".slice")?;
    if name.is_empty() || slice.contains('/') {
        return None;
    }
    if name == "-" {
        return Some("/".into());
    }
    let mut path = String::new();
    let mut prefix = String::new();
    for component in name.split('-') {
        // "a--b.slice" and "-a.slice" are not slice names.
        if component.is_empty() || component == "." || component == ".." {
            return None;
        }
        path.push('/');
        path.push_str(&prefix);
        path.push_str(component);
        path.push_str(".slice");
        prefix.push_str(component);
        prefix.push('-');
    }
    Some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4c6d2a1b9e8f";

    #[test]
    fn systemd_driver_names_a_scope_in_the_slice() {
        assert_eq!(container_cgroup("systemd", ID, "").unwrap(), format!("/system.slice/docker-{ID}.scope"));
        assert_eq!(container_cgroup("systemd", ID, "my.slice").unwrap(), format!("/my.slice/docker-{ID}.scope"));
        assert_eq!(
            container_cgroup("systemd", ID, "my-app.slice").unwrap(),
            format!("/my.slice/my-app.slice/docker-{ID}.scope")
        );
        assert_eq!(container_cgroup("systemd", ID, "-.slice").unwrap(), format!("/docker-{ID}.scope"));
    }

    #[test]
    fn cgroupfs_driver_names_a_folder_under_the_parent() {
        assert_eq!(container_cgroup("cgroupfs", ID, "").unwrap(), format!("/docker/{ID}"));
        assert_eq!(container_cgroup("cgroupfs", ID, "/boards/edge/").unwrap(), format!("/boards/edge/{ID}"));
    }

    #[test]
    fn cgroup_naming_refuses_what_runc_would_not_place_or_ferry_cannot_see() {
        for (driver, parent) in [
            ("systemd", "my.scope"),
            ("systemd", "a--b.slice"),
            ("systemd", "../x.slice"),
            ("systemd", ".slice"),
            ("cgroupfs", "relative"),
            ("cgroupfs", "/docker/../.."),
            ("", ""),
        ] {
            let error = container_cgroup(driver, ID, parent).unwrap_err();
            assert_eq!(error.kind, Kind::Refused, "{driver} {parent}: {error}");
        }
        assert!(container_cgroup("cgroupfs", "../x", "").is_err());
    }
}
