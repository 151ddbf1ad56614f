//! Reading a large file job by job: the `[[jobs]]` blocks are found by their header lines
//! and parsed one at a time, so a file with 100,000 jobs never becomes one TOML document
//! tree. [`super::parse`] falls back to the whole file when a file does not split cleanly.

use super::raw::{RawConfig, RawJob, RawJobBlock};
use toml::Spanned;

/// The jobs' table header, `[[jobs]]` (spaces allowed inside the brackets), starting a
/// line.
pub(super) fn is_jobs_header(line: &str) -> bool {
    line.trim_start()
        .strip_prefix("[[")
        .and_then(|rest| rest.split_once("]]"))
        .is_some_and(|(name, after)| {
            name.trim() == "jobs" && {
                let after = after.trim_start();
                after.is_empty() || after.starts_with('#')
            }
        })
}

/// The offsets of the file's `[[jobs]]` lines.
pub(super) fn job_blocks(text: &str) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if is_jobs_header(line) {
            starts.push(offset);
        }
        offset += line.len();
    }
    starts
}

/// The file's head (everything before the first `[[jobs]]` line) when every `[[jobs]]`
/// block parses on its own as exactly one job: then the jobs are read block by block (a
/// TOML document tree of a whole file with 100,000 jobs takes about 300 MiB while it
/// lives; block by block it takes kilobytes). `None` when the file does not split cleanly
/// (another table after the jobs, a `[[jobs]]` line inside a multi-line string, any
/// error): then the whole file is parsed at once, which also gives TOML's own messages.
pub(super) fn head_of_blocks(text: &str, starts: &[usize]) -> Option<RawConfig> {
    let first = *starts.first()?;
    let head: RawConfig = toml::from_str(&text[..first]).ok()?;
    head.jobs.is_empty().then_some(head)
}

/// Job block `i` of `starts`, parsed on its own.
pub(super) fn job_block(text: &str, starts: &[usize], i: usize) -> Option<Spanned<RawJob>> {
    let end = starts.get(i + 1).copied().unwrap_or(text.len());
    let block: RawJobBlock = toml::from_str(&text[starts[i]..end]).ok()?;
    let [job]: [Spanned<RawJob>; 1] = block.jobs.try_into().ok()?;
    Some(job)
}
