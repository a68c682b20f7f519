//! `ferry restore`: a payload → a new running container, carrying on where the
//! checkpointed one stopped.

use std::fs::File;
use std::io::{self, BufReader, Read};

use argh::FromArgs;

use super::{print_report, Context};
use crate::error::{Error, Kind, Result};
use crate::identity::Verifier;
use crate::migration::restore::{restore_from, Options};
use crate::units::{human_bytes, short_id};

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
    /// restore although the payload's source had another page size or CPU
    /// features this host lacks (the app may crash: for experts)
    #[argh(switch)]
    pub allow_host_mismatch: bool,
    /// restore a payload that is unsigned or signed by a key this host does
    /// not trust (one whose signature does not verify is always refused)
    #[argh(switch)]
    pub accept_untrusted: bool,
    /// print the summary as one JSON object
    #[argh(switch)]
    pub json: bool,
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
    let verifier = Verifier::load(args.accept_untrusted)?;
    let options = Options {
        name: args.name.as_deref(),
        fast: context.fast,
        board: tuning.board.as_ref(),
        size_limit: None,
        allow_host_mismatch: args.allow_host_mismatch,
        verify: &verifier,
    };
    let input = BufReader::with_capacity(tuning.io_buffer, input);
    let report = restore_from(&engine, &tuning.work_dir, "restore", input, &options)?;
    let line = format!(
        "restored {} ({}) as {}: unpack {:.2}s, restore {:.2}s, {} raw, {} compressed",
        report.container,
        report.mode,
        short_id(&report.id),
        report.unpack_secs,
        report.restore_secs,
        human_bytes(report.raw_bytes),
        human_bytes(report.compressed_bytes)
    );
    print_report(&line, &report, args.json, false);
    Ok(())
}
