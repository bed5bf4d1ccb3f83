//! Outcomes in row order, read from local files without holding them: each file is a few runs
//! sorted by row (a chunk's outcomes are sorted, a phase's chunks follow each other in row order,
//! ingest's outcomes are sorted with duplicates appended after the last row as a second run), and
//! the runs are merged through a heap holding one outcome per run.

use crate::model::Outcome;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

/// More runs than any job of ours writes (ingest 2, one per phase); past it the files are not
/// ours, and one reader per run must not exhaust file descriptors.
pub const MAX_RUNS: usize = 256;

/// One sorted run: a byte range of a file.
struct Run {
    lines: BufReader<std::io::Take<File>>,
    line: Vec<u8>,
}

impl Run {
    fn next(&mut self) -> std::io::Result<Option<Outcome>> {
        loop {
            self.line.clear();
            if self.lines.read_until(b'\n', &mut self.line)? == 0 {
                return Ok(None);
            }
            let text = self.line.trim_ascii();
            if !text.is_empty() {
                return serde_json::from_slice(text).map(Some).map_err(std::io::Error::other);
            }
        }
    }
}

/// The row of an outcome line, read from its start (`{"row":N,...`, how serde writes `Outcome`).
fn row_of(line: &[u8]) -> Option<u32> {
    let rest = line.strip_prefix(b"{\"row\":")?;
    let end = rest.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// (start, end) byte offsets of the sorted runs of an outcome file.
fn runs_of(path: &Path) -> std::io::Result<Vec<(u64, u64)>> {
    let mut lines = BufReader::with_capacity(64 * 1024, File::open(path)?);
    let (mut runs, mut start, mut at, mut last) = (Vec::new(), 0u64, 0u64, None::<u32>);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = lines.read_until(b'\n', &mut line)? as u64;
        if n == 0 {
            break;
        }
        if let Some(row) = row_of(line.trim_ascii()).or_else(|| serde_json::from_slice::<Outcome>(line.trim_ascii()).ok().map(|o| o.row)) {
            if last.is_some_and(|l| row < l) {
                runs.push((start, at));
                start = at;
            }
            last = Some(row);
        }
        at += n;
    }
    if at > start {
        runs.push((start, at));
    }
    Ok(runs)
}

/// Every outcome of the given files, in row order; equal rows in the order of the files given.
pub struct Merge {
    runs: Vec<Run>,
    heap: BinaryHeap<Reverse<(u32, usize)>>,
    /// The next outcome of each run, while it waits in the heap.
    heads: Vec<Option<Outcome>>,
}

impl Merge {
    pub fn open(files: &[impl AsRef<Path>]) -> std::io::Result<Merge> {
        let mut runs = Vec::new();
        for path in files {
            for (start, end) in runs_of(path.as_ref())? {
                if runs.len() == MAX_RUNS {
                    return Err(std::io::Error::other(format!("outcome files hold more than {MAX_RUNS} sorted runs")));
                }
                let mut file = File::open(path.as_ref())?;
                file.seek(SeekFrom::Start(start))?;
                runs.push(Run { lines: BufReader::with_capacity(16 * 1024, file.take(end - start)), line: Vec::new() });
            }
        }
        let mut merge = Merge { heads: (0..runs.len()).map(|_| None).collect(), runs, heap: BinaryHeap::new() };
        for i in 0..merge.runs.len() {
            merge.refill(i)?;
        }
        Ok(merge)
    }

    fn refill(&mut self, i: usize) -> std::io::Result<()> {
        if let Some(o) = self.runs[i].next()? {
            self.heap.push(Reverse((o.row, i)));
            self.heads[i] = Some(o);
        }
        Ok(())
    }

    /// The row of the next outcome, without taking it.
    pub fn peek_row(&self) -> Option<u32> {
        self.heap.peek().map(|Reverse((row, _))| *row)
    }

    pub fn pop(&mut self) -> std::io::Result<Option<Outcome>> {
        let Some(Reverse((_, i))) = self.heap.pop() else { return Ok(None) };
        let o = self.heads[i].take();
        self.refill(i)?;
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Action, Outcome};
    use std::io::Write;

    fn file(dir: &Path, name: &str, rows: &[(u32, &str)]) -> std::path::PathBuf {
        let path = dir.join(name);
        let mut f = File::create(&path).unwrap();
        for (row, msg) in rows {
            serde_json::to_writer(&mut f, &Outcome::success(*row, Action::Upsert, *msg)).unwrap();
            f.write_all(b"\n").unwrap();
        }
        path
    }

    fn drain(m: &mut Merge) -> Vec<(u32, String)> {
        std::iter::from_fn(|| m.pop().unwrap()).map(|o| (o.row, o.message)).collect()
    }

    #[test]
    fn runs_of_every_file_merge_in_row_order_and_equal_rows_keep_file_order() {
        let dir = tempfile::tempdir().unwrap();
        // ingest: rows 2, 9 then its duplicates appended (4, 7): two runs.
        let ingest = file(dir.path(), "ingest", &[(2, "i2"), (9, "i9"), (4, "dup4"), (7, "dup7")]);
        assert_eq!(runs_of(&ingest).unwrap().len(), 2);
        let p0 = file(dir.path(), "p0", &[(3, "a3"), (5, "a5"), (7, "a7")]);
        let p1 = file(dir.path(), "p1", &[(6, "b6"), (8, "b8"), (1_000_000_000, "reconcile")]);
        let empty = file(dir.path(), "empty", &[]);
        let mut m = Merge::open(&[ingest, p0, p1, empty]).unwrap();
        assert_eq!(m.peek_row(), Some(2));
        let got = drain(&mut m);
        let rows: Vec<u32> = got.iter().map(|(r, _)| *r).collect();
        assert_eq!(rows, vec![2, 3, 4, 5, 6, 7, 7, 8, 9, 1_000_000_000]);
        assert_eq!(got[5].1, "dup7", "equal rows: the earlier file first");
    }

    #[test]
    fn blank_lines_are_skipped_and_a_damaged_line_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o");
        std::fs::write(&path, b"\n{\"row\":3,\"status\":\"Success\",\"message\":\"m\"}\n\n{\"row\":4,\"status\"\n").unwrap();
        let mut m = Merge::open(&[&path]).unwrap();
        assert_eq!(m.peek_row(), Some(3), "the blank line before it is skipped");
        // The damaged line is met when the run is read past row 3: an error, not a panic.
        assert!(m.pop().is_err());
    }

    #[test]
    fn more_runs_than_a_job_writes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let rows: Vec<(u32, &str)> = (0..=MAX_RUNS as u32).rev().map(|r| (r, "x")).collect();
        let path = file(dir.path(), "descending", &rows);
        assert!(Merge::open(&[path]).is_err());
    }
}
