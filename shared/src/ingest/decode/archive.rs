//! A zip of CSV files (a OneRoster bundle is one): its entries as tables, read with the same
//! bounds as a workbook's parts. Knows nothing of what the files mean.

use super::{FileError, Table, decode_all};
use std::io::{Read, Seek};

/// What a zip holds, from its directory alone (nothing inflated).
#[derive(Debug, Clone, PartialEq)]
pub enum ZipKind {
    /// An XLSX, XLSB or ODS workbook: read by the workbook reader.
    Workbook,
    /// Any other zip: its entries' names (folders and resource forks left out), for the caller to
    /// recognise.
    Files(Vec<String>),
}

/// Entries a zip of files may have: a OneRoster bundle has at most 20 files.
pub const MAX_ENTRIES: usize = 200;
/// What one entry, and all of them together, may unzip to: the tables are held in memory.
pub const MAX_ARCHIVE_BYTES: u64 = 256 << 20;

fn damaged(e: impl std::fmt::Display) -> FileError {
    FileError::Corrupt { format: "zip", detail: e.to_string() }
}

/// Which kind of zip this is. Entries macOS adds (`__MACOSX/`, `._name`) and folders are not files.
pub fn zip_kind<R: Read + Seek>(r: &mut R) -> Result<ZipKind, FileError> {
    let zip = zip::ZipArchive::new(&mut *r).map_err(damaged)?;
    let names: Vec<String> = zip.file_names().filter_map(|n| n.ok().map(|n| n.into_owned())).collect();
    let has = |n: &str| names.iter().any(|x| x.eq_ignore_ascii_case(n));
    if has("[Content_Types].xml") || has("xl/workbook.xml") || has("xl/workbook.bin") || has("content.xml") || has("mimetype") {
        return Ok(ZipKind::Workbook);
    }
    Ok(ZipKind::Files(names.into_iter().filter(|n| !is_not_a_file(n)).collect()))
}

fn is_not_a_file(name: &str) -> bool {
    name.ends_with('/') || name.starts_with("__MACOSX/") || name.rsplit('/').next().is_some_and(|base| base.starts_with("._"))
}

/// One file of the zip, decoded: `None` when it has no header row.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Its name below `folder` (the zip's root, or the one folder everything is in).
    pub name: String,
    pub table: Option<Table>,
}

/// Every entry of the zip below `folder` (`""` for the root), each decoded as delimited text.
/// Refused, naming the entry: a path that could leave the folder (`..`, absolute, drive or
/// backslash), another archive or workbook inside, an encrypted entry, more than `MAX_ENTRIES`,
/// more than `limit` bytes unzipped declared by one entry or all together (declared sizes are
/// binding: the zip crate fails a read that inflates past one). Entries outside `folder` are not read.
pub fn read_files<R: Read + Seek>(r: &mut R, folder: &str, limit: u64) -> Result<Vec<Entry>, FileError> {
    let limit = limit.min(MAX_ARCHIVE_BYTES);
    let mut zip = zip::ZipArchive::new(&mut *r).map_err(damaged)?;
    if zip.len() > MAX_ENTRIES {
        return Err(FileError::Archive(format!("holds {} entries; a bundle has at most {MAX_ENTRIES}", zip.len())));
    }
    let mut total = 0u64;
    let mut wanted = Vec::new();
    for i in 0..zip.len() {
        let entry = zip.by_index_raw(i).map_err(damaged)?;
        let name = entry.name().map_err(damaged)?.into_owned();
        if is_not_a_file(&name) {
            continue;
        }
        let unsafe_path = entry.enclosed_name().is_none()
            || name.contains('\\')
            || name.starts_with('/')
            || name.split('/').any(|part| part == ".." || part == "." || part.contains(':'));
        if unsafe_path {
            return Err(FileError::Archive(format!(
                "has an entry named \"{}\", a path that leaves the bundle; entries must be plain file names",
                crate::wording::quoted(&name)
            )));
        }
        if entry.encrypted() {
            return Err(FileError::Archive(format!(
                "entry \"{}\" is encrypted; zip the files again without a password",
                crate::wording::quoted(&name)
            )));
        }
        let size = entry.size();
        if size > limit {
            return Err(FileError::Archive(format!(
                "entry \"{}\" unzips to {}; a bundle's files may unzip to {} together here",
                crate::wording::quoted(&name),
                size_text(size),
                size_text(limit)
            )));
        }
        total = total.saturating_add(size);
        if let Some(rest) = name.strip_prefix(folder) {
            wanted.push((i, rest.to_string(), size));
        }
    }
    if total > limit {
        return Err(FileError::Archive(format!(
            "unzips to {}; a bundle may unzip to {} here: split it (by school, for example)",
            size_text(total),
            size_text(limit)
        )));
    }
    let mut out = Vec::with_capacity(wanted.len());
    for (i, name, size) in wanted {
        let lower = name.to_ascii_lowercase();
        if [".zip", ".xlsx", ".xls", ".ods", ".gz", ".7z", ".rar", ".tar"].iter().any(|ext| lower.ends_with(ext)) {
            return Err(nested(&name));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        let entry = zip.by_index(i).map_err(damaged)?;
        entry.take(size + 1).read_to_end(&mut bytes).map_err(damaged)?;
        if bytes.len() as u64 != size {
            return Err(damaged(format!("entry {name} is not the size its directory says")));
        }
        if super::is_workbook(&bytes) {
            return Err(nested(&name));
        }
        let table = match decode_all(&bytes) {
            Ok(mut tables) => tables.drain(..).next(),
            Err(FileError::Empty) => None,
            Err(e) => return Err(FileError::Archive(format!("entry \"{}\": {e}", crate::wording::quoted(&name)))),
        };
        out.push(Entry { name, table });
    }
    Ok(out)
}

/// "2 MB", or "356 KB" below a megabyte (rounded up: never "0 MB").
fn size_text(bytes: u64) -> String {
    if bytes >= 1 << 20 { format!("{} MB", bytes.div_ceil(1 << 20)) } else { format!("{} KB", bytes.div_ceil(1 << 10)) }
}

fn nested(name: &str) -> FileError {
    FileError::Archive(format!(
        "holds another archive or workbook (\"{}\"); a bundle holds CSV files only, at its top level",
        crate::wording::quoted(name)
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::{Cursor, Write};

    /// A zip of (name, bytes), deflated.
    pub fn zip_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, bytes) in files {
            w.start_file(*name, zip::write::SimpleFileOptions::default()).unwrap();
            w.write_all(bytes).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    #[test]
    fn a_zip_of_csv_files_is_read_entry_by_entry_and_a_workbook_is_told_apart() {
        let z = zip_of(&[("manifest.csv", b"propertyName,value\nmanifest.version,1.0\n"), ("__MACOSX/._x", b"junk")]);
        assert_eq!(zip_kind(&mut Cursor::new(&z)).unwrap(), ZipKind::Files(vec!["manifest.csv".into()]));
        let files = read_files(&mut Cursor::new(&z), "", MAX_ARCHIVE_BYTES).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].table.as_ref().unwrap().rows[0].1, vec!["manifest.version", "1.0"]);
        let xlsx = rust_xlsxwriter::Workbook::new().save_to_buffer().unwrap();
        assert_eq!(zip_kind(&mut Cursor::new(&xlsx)).unwrap(), ZipKind::Workbook);
    }

    #[test]
    fn hostile_entries_are_refused_naming_them() {
        let cases: &[(&str, &[u8], &str)] = &[
            ("../evil.csv", b"a\n1\n", "leaves the bundle"),
            ("c:users.csv", b"a\n1\n", "leaves the bundle"),
            ("inner.zip", b"PK\x03\x04", "another archive"),
            ("users.csv", b"PK\x03\x04rest", "another archive"),
        ];
        for (name, bytes, says) in cases {
            let z = zip_of(&[(name, bytes)]);
            let e = read_files(&mut Cursor::new(&z), "", MAX_ARCHIVE_BYTES).unwrap_err().to_string();
            assert!(e.contains(says), "{name}: {e}");
        }
        let big = vec![b'a'; 5000];
        let z = zip_of(&[("users.csv", &big)]);
        let e = read_files(&mut Cursor::new(&z), "", 4096).unwrap_err().to_string();
        assert!(e.contains("unzips to 5 KB; a bundle's files may unzip to 4 KB together here"), "{e}");
    }

    #[test]
    fn too_many_entries_are_refused_before_any_is_read() {
        let names: Vec<String> = (0..=MAX_ENTRIES).map(|i| format!("f{i}.csv")).collect();
        let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"a\n1\n"[..])).collect();
        let e = read_files(&mut Cursor::new(zip_of(&files)), "", MAX_ARCHIVE_BYTES).unwrap_err().to_string();
        assert!(e.contains("at most 200"), "{e}");
    }
}
