//! results.json: the rows, the per-phase summaries and the fits.

use std::io::{self, Write};

use super::Exporter;
use crate::bench::Results;

pub(crate) struct Json;

impl Exporter for Json {
    fn file_name(&self) -> &'static str {
        "results.json"
    }

    fn write(&self, results: &Results, out: &mut dyn Write) -> io::Result<()> {
        serde_json::to_writer_pretty(&mut *out, results).map_err(io::Error::other)?;
        writeln!(out)
    }
}
