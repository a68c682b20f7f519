//! `ferry bench`: reproduce the paper's experiments on this host.

use std::path::PathBuf;
use std::time::Duration;

use argh::FromArgs;

use super::{link, peer, Context};
use crate::bench::{self, Phase};
use crate::board::Tuning;
use crate::error::{Error, Kind, Result};
use crate::payload::Mode;

#[derive(FromArgs, Debug)]
/// Measure checkpoint and restore against memory size, CRIU against commit, and their CPU cost.
#[argh(subcommand, name = "bench")]
pub(crate) struct Args {
    /// memory sizes in MiB (default 16,32,64,128,256,512)
    #[argh(option, default = "String::from(\"16,32,64,128,256,512\")")]
    pub sizes: String,
    /// repetitions of every size and mode (default 3)
    #[argh(option, default = "3")]
    pub repeat: u32,
    /// modes to measure: criu, commit, or both (default criu,commit)
    #[argh(option, default = "String::from(\"criu,commit\")")]
    pub mode: String,
    /// also measure the paper's own method (docker checkpoint + tar + start --checkpoint)
    #[argh(switch)]
    pub baseline: bool,
    /// cap the workload as this board profile says, and use its buffers
    #[argh(option)]
    pub board: Option<String>,
    /// the workload image, run as `/counter MIB 100` (default ferry-workload:latest)
    #[argh(option, default = "String::from(\"ferry-workload:latest\")")]
    pub image: String,
    /// restore on this peer's agent (HOST:PORT) instead of here: ferry's modes
    /// then measure the transfer too (the baseline stays on this host)
    #[argh(option)]
    pub to: Option<String>,
    /// file holding the agent's shared token (with --to)
    #[argh(option)]
    pub token_file: Option<PathBuf>,
    /// plain HTTP, no TLS, payloads unsigned: for a network you trust (logs a warning)
    #[argh(switch)]
    pub insecure: bool,
    /// folder for results.csv, results.json, summary.md and the SVG figures
    #[argh(option, default = "PathBuf::from(\"ferry-bench\")")]
    pub out: PathBuf,
}

pub(crate) fn run(context: &Context, args: Args) -> Result<()> {
    let sizes = args
        .sizes
        .split(',')
        .map(|s| s.trim().parse::<u32>().ok().filter(|&n| (1..=65536).contains(&n)))
        .collect::<Option<Vec<u32>>>()
        .ok_or_else(|| Error::new(Kind::Usage, format!("--sizes '{}' is not a list of MiB such as 16,64,256", args.sizes)))?;
    let modes = args.mode.split(',').map(|m| m.trim().parse::<Mode>()).collect::<std::result::Result<Vec<Mode>, String>>().map_err(|m| Error::new(Kind::Usage, m))?;
    if args.repeat == 0 {
        return Err(Error::new(Kind::Usage, "--repeat must be 1 or more"));
    }
    let tuning = context.tuning(args.board.as_deref())?;
    let engine = context.engine()?;
    let link = match &args.to {
        Some(_) => Some(link(args.token_file.as_deref(), args.insecure)?),
        None => None,
    };
    let signer = match &link {
        Some(link) => link.signer.clone(),
        None => super::own_signer()?.map(std::sync::Arc::new),
    };
    let options = bench::Options {
        sizes,
        repeat: args.repeat,
        modes,
        baseline: args.baseline,
        out: args.out.clone(),
        image: args.image,
        tuning: Tuning { work_dir: tuning.work_dir.join("bench"), ..tuning },
        fast: context.fast,
        peer: args.to.as_deref().zip(link.as_ref()).map(|(addr, link)| peer(addr, link, Duration::from_secs(300))),
        signer,
    };
    let results = bench::run(&engine, &options)?;
    say!("bench: {} runs, results in {}", results.rows.len() / Phase::ALL.len(), args.out.display());
    for fit in results.fits.iter().filter(|f| f.phase != Phase::Total) {
        say!("  {} {}: {:.3} s/GiB + {:.3} s (R² {:.2})", fit.method, fit.phase, fit.slope_s_per_gib, fit.intercept_s, fit.r_squared);
    }
    Ok(())
}
