//! `ferry trust`: the peers this host trusts (issue 12).

use argh::FromArgs;

use crate::error::Result;
use crate::identity::{self, Trust, trusted};

#[derive(FromArgs, Debug)]
/// Pin, list or forget the keys of the peers this host trusts.
#[argh(subcommand, name = "trust")]
pub(crate) struct Args {
    #[argh(subcommand)]
    command: TrustCommand,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum TrustCommand {
    Add(AddArgs),
    List(ListArgs),
    Remove(RemoveArgs),
}

#[derive(FromArgs, Debug)]
/// Trust a peer's key: NAME and the fingerprint `ferry keys show` prints on it.
#[argh(subcommand, name = "add")]
struct AddArgs {
    /// the peer's name
    #[argh(positional)]
    name: String,
    /// its key's fingerprint, sha256:HEX
    #[argh(positional)]
    fingerprint: String,
}

#[derive(FromArgs, Debug)]
/// List the trusted peers (NAME FINGERPRINT) and whether a fleet CA is installed.
#[argh(subcommand, name = "list")]
struct ListArgs {}

#[derive(FromArgs, Debug)]
/// Stop trusting a peer.
#[argh(subcommand, name = "remove")]
struct RemoveArgs {
    /// the peer's name, as `ferry trust list` shows it
    #[argh(positional)]
    name: String,
}

pub(crate) fn run(args: Args) -> Result<()> {
    let dir = identity::config_dir();
    match args.command {
        TrustCommand::Add(add) => trusted::add(&dir, &add.name, &add.fingerprint),
        TrustCommand::Remove(remove) => trusted::remove(&dir, &remove.name),
        TrustCommand::List(_) => {
            let trust = Trust::load(&dir)?;
            for pin in &trust.pinned {
                say!("{} {}", pin.name, pin.fingerprint);
            }
            // A comment, so the output stays in the `trusted` file's format.
            match trust.ca.len() {
                0 => say!("# no fleet CA ({} is absent)", dir.join(identity::CA_FILE).display()),
                n => say!("# fleet CA: {} ({n} certificate{})", dir.join(identity::CA_FILE).display(), if n == 1 { "" } else { "s" }),
            }
            if trust.is_empty() {
                eprintln!("nobody is trusted yet: `ferry trust add NAME FINGERPRINT` for each peer, or install the fleet CA as ca.pem");
            }
            Ok(())
        }
    }
}
