//! `ferry boards`: the built-in board profiles.

use argh::FromArgs;

use crate::board::Board;
use crate::error::Result;

#[derive(FromArgs, Debug)]
/// List the built-in board profiles (for --board).
#[argh(subcommand, name = "boards")]
pub(crate) struct Args {
    /// print the profiles as JSON
    #[argh(switch)]
    pub json: bool,
}

pub(crate) fn run(args: Args) -> Result<()> {
    let boards = Board::all();
    if args.json {
        let list: Vec<serde_json::Value> = boards
            .iter()
            .map(|b| {
                serde_json::json!({
                    "name": b.name, "description": b.description, "memory_mib": b.memory_mib, "cpus": b.cpus,
                    "io_buffer_kib": b.io_buffer_kib, "lz4_block_kib": b.lz4_block_kib, "work_dir": b.work_dir,
                })
            })
            .collect();
        say!("{}", serde_json::Value::Array(list));
        return Ok(());
    }
    say!("{:<12} {:>8} {:>5} {:>7} {:>6}  {:<16} description", "board", "memory", "cpus", "io_buf", "lz4", "work dir");
    for b in boards {
        say!(
            "{:<12} {:>4} MiB {:>5} {:>3} KiB {:>2} KiB  {:<16} {}",
            b.name,
            b.memory_mib,
            b.cpus,
            b.io_buffer_kib,
            b.lz4_block_kib,
            b.work_dir.display(),
            b.description
        );
    }
    Ok(())
}
