//! `ferry checkpoint`: a running container → one payload (a file or stdout).

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::time::Instant;

use argh::FromArgs;
use serde::Serialize;

use super::{print_report, Context};
use crate::error::{io_error, Result};
use crate::host::{self, PrivateFile};
use crate::migration::{checkpoint, preflight};
use crate::payload::{self, Mode};
use crate::units::{human_bytes, seconds_since};

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
    #[argh(option, default = "Mode::Criu")]
    pub mode: Mode,
    /// use this board profile's buffer and lz4 block sizes and work dir
    #[argh(option)]
    pub board: Option<String>,
    /// print the summary as one JSON object
    #[argh(switch)]
    pub json: bool,
}

/// Timings and sizes of one checkpoint.
#[derive(Debug, Serialize)]
struct Report {
    container: String,
    mode: &'static str,
    /// How CRIU was asked to dump: `runc` (fast) or `docker-api` (portable).
    checkpoint_path: &'static str,
    checkpoint_secs: f64,
    pack_secs: f64,
    raw_bytes: u64,
    compressed_bytes: u64,
    output: String,
    /// ferry's own peak RSS, runc and CRIU not included.
    peak_rss_kib: u64,
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
    let (sink, partial): (Box<dyn Write>, Option<PrivateFile>) = match &output_path {
        Some(path) => {
            let (partial, file) =
                PrivateFile::create(path).map_err(|e| io_error(format!("cannot write {}", path.display()), e))?;
            (Box::new(BufWriter::with_capacity(tuning.io_buffer, file)), Some(partial))
        }
        None => (Box::new(io::stdout().lock()), None),
    };

    let signer = super::own_signer()?;
    let info = engine.info()?;
    let carryable = preflight::check(&engine, &info, &args.container, args.mode)?;
    let options = checkpoint::Options { tuning: &tuning, leave_running: args.leave_running, fast: context.fast };
    let mut taken = checkpoint::take(&engine, &info, &carryable, &options)?;
    let pack_started = Instant::now();
    let stats = match taken.pack_into(sink, signer.as_ref().map(|s| s as &dyn payload::Sign), None, true) {
        Ok(stats) => stats,
        Err(error) => return Err(taken.give_back(&engine, &info, error)),
    };
    // The payload is whole: it takes the output's name.
    let output = match partial.map(PrivateFile::commit).transpose() {
        Ok(output) => output.map_or_else(|| "-".into(), |path| path.display().to_string()),
        Err(e) => return Err(taken.give_back(&engine, &info, io_error("cannot name the payload", e))),
    };
    let report = Report {
        container: taken.name.clone(),
        mode: args.mode.as_str(),
        checkpoint_path: taken.checkpoint_path,
        checkpoint_secs: taken.checkpoint_secs,
        pack_secs: seconds_since(pack_started),
        raw_bytes: stats.raw_bytes,
        compressed_bytes: stats.compressed_bytes,
        output,
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
    print_report(&line, &report, args.json, to_stdout);
    Ok(())
}
