//! What may be carried, decided once, from one inspect, before anything stops.

use serde::Deserialize;

use crate::engine::{self, ContainerInspect, Engine, Info};
use crate::error::{Error, Kind, Result};
use crate::payload::Mode;

/// A running container that ferry may checkpoint in the mode it was checked
/// for. Only [`check`] makes one, so a checkpoint cannot skip the checks.
#[derive(Debug)]
pub(crate) struct Carryable {
    pub inspect: ContainerInspect,
    pub mode: Mode,
}

/// Refuses, naming every reason, a container that does not run, needs more
/// than a payload may ask for, or (criu mode) an engine without checkpoints.
pub(crate) fn check(engine: &Engine, info: &Info, container: &str, mode: Mode) -> Result<Carryable> {
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
    Ok(Carryable { inspect, mode })
}

/// Looks a container up, turning "no such container" into a clear not-found.
pub(crate) fn inspect_named(engine: &Engine, name: &str) -> Result<ContainerInspect> {
    engine.inspect_container(name).map_err(|e| {
        if engine::is_not_found(&e) {
            Error::new(Kind::NotFound, format!("no container named '{name}' on this host — `docker ps -a` lists them"))
        } else {
            e.into()
        }
    })
}

/// Checkpoints need an engine in experimental mode, on both sides.
pub(crate) fn require_experimental(info: &Info) -> Result<()> {
    if info.experimental_build {
        return Ok(());
    }
    Err(Error::new(
        Kind::Docker,
        "the Docker engine is not in experimental mode, so it can neither checkpoint nor restore — put \
         {\"experimental\": true} in /etc/docker/daemon.json and restart dockerd",
    ))
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
    security_opt: Option<Vec<String>>,
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
    // seccomp or AppArmor unconfined, label=disable, no-new-privileges:false,
    // a custom profile: the peer would create the container with the
    // engine's defaults, and the images (which keep the weaker confinement)
    // would be refused there — or, worse, restored weaker than the config says.
    for option in powers.security_opt.iter().flatten() {
        reasons.push(format!("it runs with the security option {option}, which ferry cannot recreate on another host"));
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
                   "IpcMode": "container:db", "CapAdd": ["SYS_ADMIN"], "SecurityOpt": ["seccomp=unconfined"]}),
            json!([{"Type": "volume", "Name": "pgdata", "Destination": "/var/lib/postgresql"}]),
        );
        let error = refuse_uncarryable(&powerful).unwrap_err();
        assert_eq!(error.kind, Kind::Refused);
        for reason in ["runs privileged", "host devices", "PID namespace of host", "IPC namespace of container:db",
                       "SYS_ADMIN", "volume 'pgdata' at /var/lib/postgresql", "security option seccomp=unconfined"] {
            assert!(error.message.contains(reason), "{reason:?} missing from: {}", error.message);
        }
    }
}
