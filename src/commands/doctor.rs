//! `ferry doctor`: one line per host check, with the fix for each failure.

use argh::FromArgs;

use super::Context;
use crate::doctor::run_checks;
use crate::engine;
use crate::error::{Error, Kind, Result};

#[derive(FromArgs, Debug)]
/// Check that this host can checkpoint and restore containers.
#[argh(subcommand, name = "doctor")]
pub(crate) struct Args {
    /// print the checks as JSON
    #[argh(switch)]
    pub json: bool,
}

pub(crate) fn run(context: &Context, args: Args) -> Result<()> {
    let socket = engine::socket_path(context.docker_socket.as_deref()).map_err(|m| Error::new(Kind::Usage, m))?;
    let checks = run_checks(&socket, &context.work_dir, &crate::identity::config_dir());
    if args.json {
        say!("{}", serde_json::json!(checks));
    } else {
        for check in &checks {
            let status = if check.ok { "OK  " } else if check.required { "FAIL" } else { "WARN" };
            if check.fix.is_empty() {
                say!("{status} {:<14} {}", check.name, check.detail);
            } else {
                say!("{status} {:<14} {} — {}", check.name, check.detail, check.fix);
            }
        }
    }
    let failed: Vec<&str> = checks.iter().filter(|c| c.required && !c.ok).map(|c| c.name).collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::new(Kind::Failure, format!("this host cannot run ferry yet: {} failed", failed.join(", "))))
    }
}
