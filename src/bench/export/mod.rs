//! Every output of `ferry bench` is one small type behind one trait; the
//! bench only loops over them (the shape of hyperfine's exporters).

mod csv;
mod json;
mod markdown;
mod svg;

use std::io::{self, Write};

use super::{Phase, Results};

pub(crate) trait Exporter {
    fn file_name(&self) -> &'static str;
    fn write(&self, results: &Results, out: &mut dyn Write) -> io::Result<()>;
}

pub(crate) fn all() -> Vec<Box<dyn Exporter>> {
    vec![
        Box::new(csv::Csv),
        Box::new(json::Json),
        Box::new(markdown::Markdown),
        Box::new(svg::TimeVsMemory),
        Box::new(svg::CriuVsCommit),
        Box::new(svg::CpuDuring { phase: Phase::Checkpoint, file: "fig4-cpu-checkpoint.svg" }),
        Box::new(svg::CpuDuring { phase: Phase::Restore, file: "fig5-cpu-restore.svg" }),
    ]
}
