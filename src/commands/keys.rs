//! `ferry keys`: this host's key and certificate (issue 12).

use std::path::PathBuf;

use argh::FromArgs;

use crate::error::{Error, Kind, Result};
use crate::identity::keys::{self, NewKey, Summary};
use crate::identity::validity::utc;
use crate::identity::{self, Identity};

#[derive(FromArgs, Debug)]
/// Make or show this host's key and certificate (in $FERRY_CONFIG_DIR, else /etc/ferry).
#[argh(subcommand, name = "keys")]
pub(crate) struct Args {
    #[argh(subcommand)]
    command: KeysCommand,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum KeysCommand {
    Init(InitArgs),
    Show(ShowArgs),
    Csr(CsrArgs),
    InstallCert(InstallCertArgs),
}

#[derive(FromArgs, Debug)]
/// Create this host's Ed25519 key and a self-signed certificate; print its fingerprint.
#[argh(subcommand, name = "init")]
struct InitArgs {
    /// the name peers know this host by: certificate CN and first SAN (default: the host name)
    #[argh(option)]
    name: Option<String>,
    /// another DNS name or IP address sources dial this host by (repeatable)
    #[argh(option)]
    san: Vec<String>,
    /// days the certificate is valid (default 3650)
    #[argh(option, default = "3650")]
    days: u32,
    /// replace an existing key (peers must then trust the new fingerprint)
    #[argh(switch)]
    force: bool,
}

#[derive(FromArgs, Debug)]
/// Print this host's name, fingerprint and certificate expiry.
#[argh(subcommand, name = "show")]
struct ShowArgs {}

#[derive(FromArgs, Debug)]
/// Print a certificate signing request for this host's key, for the fleet CA.
#[argh(subcommand, name = "csr")]
struct CsrArgs {
    /// the name to ask for (default: the current certificate's, else the host name)
    #[argh(option)]
    name: Option<String>,
    /// another DNS name or IP address to ask for (repeatable)
    #[argh(option)]
    san: Vec<String>,
}

#[derive(FromArgs, Debug)]
/// Install a certificate the fleet CA issued for this host's key (the old one is kept as cert.pem.old).
#[argh(subcommand, name = "install-cert")]
struct InstallCertArgs {
    /// the PEM certificate (then any intermediates)
    #[argh(positional)]
    file: PathBuf,
}

pub(crate) fn run(args: Args) -> Result<()> {
    let dir = identity::config_dir();
    match args.command {
        KeysCommand::Init(init) => {
            let name = init.name.unwrap_or_else(crate::host::hostname);
            let new = NewKey { name: &name, sans: &init.san, days: init.days, force: init.force };
            let fingerprint = keys::init(&dir, &new)?;
            say!("{fingerprint}");
            eprintln!("on each peer, trust this host with: ferry trust add {name} {fingerprint}");
        }
        KeysCommand::Show(_) => {
            let identity = Identity::load(&dir)?;
            let summary = Summary::of(&identity);
            say!("name        {}", summary.name.as_deref().unwrap_or("(no usable CN)"));
            say!("fingerprint {}", summary.fingerprint);
            match &summary.validity {
                Some(validity) => say!("expires     {}", utc(validity.not_after)),
                None => say!("expires     (unreadable)"),
            }
            say!("issuer      {}", summary.issuer.as_deref().unwrap_or("itself (self-signed)"));
        }
        KeysCommand::Csr(csr) => {
            let request = keys::csr(&dir, csr.name.as_deref(), &csr.san)?;
            say!("{}", request.trim_end());
        }
        KeysCommand::InstallCert(install) => {
            if !install.file.exists() {
                return Err(Error::new(Kind::NotFound, format!("{} does not exist", install.file.display())));
            }
            let fingerprint = keys::install_cert(&dir, &install.file)?;
            eprintln!("installed {} as {}; the fingerprint is unchanged", install.file.display(), dir.join(identity::CERT_FILE).display());
            say!("{fingerprint}");
        }
    }
    Ok(())
}
