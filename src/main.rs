//! ferry: move a running Docker container to another host with CRIU, state intact.
//!
//! `main` parses the command line, sets up logging on stderr, runs one command
//! and maps its error to an exit code (see the README's table).

/// `println!` for what a command prints: a closed stdout (`ferry boards | head`)
/// ends the output quietly instead of panicking, as a broken pipe should.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

mod bench;
mod board;
mod commands;
mod doctor;
mod engine;
mod error;
mod fleet;
mod host;
mod identity;
mod migration;
mod payload;
mod runc;
mod snapshots;
#[cfg(test)]
mod testing;
mod tls_client;
mod transfer;
mod units;

use std::path::PathBuf;
use std::process::ExitCode;

use argh::FromArgs;

use commands::Context;
use error::{Error, Kind};

/// What a lone "-" on the command line stands for.
const STDIN_PATH: &str = "/dev/stdin";

/// Where ferry keeps checkpoints while it packs and unpacks them.
const DEFAULT_WORK_DIR: &str = "/var/lib/ferry";

#[derive(FromArgs, Debug)]
/// Move a running Docker container to another host with CRIU, state intact.
struct Cli {
    /// the Docker engine's Unix socket (default: $DOCKER_HOST, else /var/run/docker.sock)
    #[argh(option)]
    docker_socket: Option<PathBuf>,
    /// folder for checkpoints in transit (default: $FERRY_WORK_DIR, else /var/lib/ferry)
    #[argh(option)]
    work_dir: Option<PathBuf>,
    /// log more (debug); FERRY_LOG=debug|info|warn|error sets the level too
    #[argh(switch, short = 'v')]
    verbose: bool,
    /// log errors only
    #[argh(switch, short = 'q')]
    quiet: bool,
    /// only use Docker's checkpoint API, never the faster runc and symlink paths
    #[argh(switch)]
    portable: bool,
    /// print the version and exit
    #[argh(switch)]
    version: bool,
    #[argh(subcommand)]
    command: Option<Command>,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum Command {
    Checkpoint(commands::checkpoint::Args),
    Restore(commands::restore::Args),
    Doctor(commands::doctor::Args),
    Serve(commands::serve::Args),
    Boards(commands::boards::Args),
    Replicate(commands::replicate::Args),
    Snapshots(commands::snapshots::Args),
    Failover(commands::failover::Args),
    Bench(commands::bench::Args),
    Migrate(commands::migrate::Args),
    Recover(commands::recover::Args),
    Keys(commands::keys::Args),
    Trust(commands::trust::Args),
    Fleet(commands::fleet::Args),
    Balance(commands::balance::Args),
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let program = args.first().map(String::as_str).unwrap_or("ferry");
    // argh takes a lone "-" for an unknown flag; as a positional it means
    // stdin, so hand argh the path that says so. (`-o -` is an option's value
    // and stays as it is.)
    let rest: Vec<&str> = args
        .iter()
        .skip(1)
        .enumerate()
        .map(|(i, arg)| {
            let after_option = i > 0 && matches!(args[i].as_str(), "-o" | "--output");
            if arg == "-" && !after_option { STDIN_PATH } else { arg.as_str() }
        })
        .collect();
    let cli = match Cli::from_args(&[program], &rest) {
        Ok(cli) => cli,
        Err(early) => {
            // --help prints to stdout and succeeds; a usage error goes to stderr.
            return match early.status {
                Ok(()) => {
                    say!("{}", early.output);
                    ExitCode::SUCCESS
                }
                Err(()) => {
                    eprintln!("{}", early.output.trim_end());
                    ExitCode::from(Kind::Usage.exit_code())
                }
            };
        }
    };
    init_logging(&cli);
    match try_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            log::error!("{error}");
            ExitCode::from(error.kind.exit_code())
        }
    }
}

fn try_main(cli: Cli) -> Result<(), Error> {
    if cli.version {
        say!("ferry {}", env!("CARGO_PKG_VERSION"));
        return Ok(());
    }
    let chosen_work_dir = cli.work_dir.or_else(|| std::env::var_os("FERRY_WORK_DIR").map(PathBuf::from));
    let work_dir = chosen_work_dir.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_WORK_DIR));
    let context = Context { docker_socket: cli.docker_socket, work_dir, chosen_work_dir, fast: !cli.portable };
    let Some(command) = cli.command else {
        return Err(Error::new(Kind::Usage, "no command given — `ferry --help` lists them"));
    };
    match command {
        Command::Checkpoint(args) => commands::checkpoint::run(&context, args),
        Command::Restore(args) => commands::restore::run(&context, args),
        Command::Doctor(args) => commands::doctor::run(&context, args),
        Command::Serve(args) => commands::serve::run(&context, args),
        Command::Boards(args) => commands::boards::run(args),
        Command::Replicate(args) => commands::replicate::run(&context, args),
        Command::Snapshots(args) => commands::snapshots::run(&context, args),
        Command::Failover(args) => commands::failover::run(&context, args),
        Command::Bench(args) => commands::bench::run(&context, args),
        Command::Migrate(args) => commands::migrate::run(&context, args),
        Command::Recover(args) => commands::recover::run(&context, args),
        Command::Keys(args) => commands::keys::run(args),
        Command::Trust(args) => commands::trust::run(args),
        Command::Fleet(args) => commands::fleet::run(args),
        Command::Balance(args) => commands::balance::run(&context, args),
    }
}

fn init_logging(cli: &Cli) {
    let from_env = std::env::var("FERRY_LOG").ok().and_then(|v| v.parse::<log::LevelFilter>().ok());
    let level = if cli.quiet {
        log::LevelFilter::Error
    } else if cli.verbose {
        log::LevelFilter::Debug
    } else {
        from_env.unwrap_or(log::LevelFilter::Info)
    };
    // Only ferry's own records: ureq's are noise at debug level.
    let _ = simple_logger::SimpleLogger::new()
        .with_level(log::LevelFilter::Warn)
        .with_module_level("ferry", level)
        .init();
}
