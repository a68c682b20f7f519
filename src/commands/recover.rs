//! `ferry recover`: settle the migrations a killed or cut-off `ferry migrate`
//! left unfinished (see transfer/recover.rs). Init scripts run it at boot,
//! before the agent.

use std::path::PathBuf;
use std::time::Duration;

use argh::FromArgs;

use super::Context;
use crate::error::{Error, Kind, Result};
use crate::transfer::recover::recover;

#[derive(FromArgs, Debug)]
/// Settle unfinished migrations: run each app on exactly one host again.
#[argh(subcommand, name = "recover")]
pub(crate) struct Args {
    /// file holding the peers' shared token
    #[argh(option)]
    pub token_file: Option<PathBuf>,
    /// plain HTTP, no TLS, payloads unsigned: for a network you trust (logs a warning)
    #[argh(switch)]
    pub insecure: bool,
    /// seconds to keep asking a peer that does not answer (default 30)
    #[argh(option, default = "30")]
    pub timeout: u64,
    /// print the settlements as JSON
    #[argh(switch)]
    pub json: bool,
}

pub(crate) fn run(context: &Context, args: Args) -> Result<()> {
    let engine = context.engine()?;
    let link = super::link(args.token_file.as_deref(), args.insecure)?;
    let settled = recover(&engine, &context.work_dir, &link, Duration::from_secs(args.timeout))?;
    if args.json {
        say!("{}", serde_json::json!(settled));
    } else {
        for s in &settled {
            say!("{} {} → {}: runs {} ({})", s.id, s.container, s.peer, s.runs, s.detail);
        }
    }
    let unknown: Vec<&str> = settled.iter().filter(|s| s.runs == "unknown").map(|s| s.container.as_str()).collect();
    if unknown.is_empty() {
        return Ok(());
    }
    Err(Error::new(
        Kind::OutcomeUnknown,
        format!("{}: the peer could not be asked; they stay stopped here — run `ferry recover` again when it answers", unknown.join(", ")),
    ))
}
