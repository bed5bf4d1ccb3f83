//! The workbook stream calamine's XLS reader takes, found the way it finds it. calamine does not
//! walk the compound file's tree: it reads every 128-byte entry of the directory chain, reachable
//! from the root or not, and takes the first whose name is "Workbook" ignoring ASCII case (else
//! "Book"), at any depth. A guard that measured the root-level "Workbook" of the tree could be
//! shown a harmless stream while calamine read another (`WORKBOOK`, one in a storage, one no tree
//! reaches). Knows OLE, not rosters.

use std::io::{self, Read, Seek, SeekFrom};

/// The entry calamine reads, as its directory holds it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Chosen {
    /// Its name, decoded as calamine decodes it.
    pub name: String,
    pub len: u64,
    /// How many entries bear that name, ignoring ASCII case (calamine takes the first).
    pub namesakes: usize,
}

const END_OF_CHAIN: u32 = 0xFFFF_FFFE;
const RESERVED: u32 = 0xFFFF_FFFA;
const DIFAT_SECTOR: u32 = 0xFFFF_FFFC;

fn damaged(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn u32s(b: &[u8]) -> impl Iterator<Item = u32> + '_ {
    b.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

/// The entry calamine would read its workbook from; `None` when none is named so (calamine then
/// refuses the file itself). Every chain is followed at most once per sector of the file: a
/// directory that would make calamine read more (a loop, more FAT sectors than the file has) is
/// an error here.
pub(super) fn workbook_entry<R: Read + Seek>(r: &mut R, size: u64) -> io::Result<Option<Chosen>> {
    r.seek(SeekFrom::Start(0))?;
    let mut header = [0u8; 512];
    r.read_exact(&mut header)?;
    let sector_size: u64 = match u16::from_le_bytes([header[30], header[31]]) {
        0x0009 => 512,
        0x000C => 4096,
        _ => return Err(damaged("sector size")),
    };
    let small = sector_size == 512;
    // calamine refuses an id past this; the sectors of the file.
    let max_id = size / sector_size;
    let mut sector = |id: u32| -> io::Result<Vec<u8>> {
        if u64::from(id) > max_id {
            return Err(damaged("sector past the end"));
        }
        let mut buf = Vec::with_capacity(sector_size as usize);
        r.seek(SeekFrom::Start((u64::from(id) + 1) * sector_size))?;
        r.by_ref().take(sector_size).read_to_end(&mut buf)?;
        Ok(buf)
    };
    let at = |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    let (dir_start, difat_start) = (at(48), at(68));
    let mut difat: Vec<u32> = u32s(&header[76..512]).collect();
    let mut next = difat_start;
    let mut hops = 0u64;
    while next < RESERVED {
        hops += 1;
        if hops > max_id + 1 {
            return Err(damaged("DIFAT chain"));
        }
        difat.extend(u32s(&sector(next)?));
        next = difat.pop().ok_or_else(|| damaged("DIFAT chain"))?;
    }
    let fat_sectors: Vec<u32> = difat.into_iter().filter(|&id| id < DIFAT_SECTOR).collect();
    if fat_sectors.len() as u64 > max_id + 1 {
        return Err(damaged("more FAT sectors than the file has"));
    }
    let mut fat = Vec::new();
    for id in fat_sectors {
        fat.extend(u32s(&sector(id)?));
    }
    let mut entries = Vec::new();
    let (mut id, mut hops) = (dir_start, 0u64);
    while id != END_OF_CHAIN {
        hops += 1;
        if hops > max_id + 1 {
            return Err(damaged("directory chain"));
        }
        let bytes = sector(id)?;
        for e in bytes.chunks_exact(128) {
            // As calamine: all 64 name bytes as UTF-16, cut at the first NUL.
            let units = e[..64].chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]));
            let mut name: String = char::decode_utf16(units).map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER)).collect();
            if let Some(nul) = name.find('\0') {
                name.truncate(nul);
            }
            let len = if small {
                u64::from(u32s(&e[120..124]).next().unwrap_or(0))
            } else {
                u64::from_le_bytes(e[120..128].try_into().unwrap_or_default())
            };
            entries.push((name, len));
        }
        id = *fat.get(id as usize).ok_or_else(|| damaged("directory chain"))?;
    }
    Ok(["Workbook", "Book"].into_iter().find_map(|wanted| {
        let mut named = entries.iter().filter(|(n, _)| n.eq_ignore_ascii_case(wanted));
        let (name, len) = named.next()?;
        Some(Chosen { name: name.clone(), len: *len, namesakes: 1 + named.count() })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::decode::FileError;
    use crate::ingest::decode::guards::check_ole_container;
    use std::io::{Cursor, Write};

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{}/../tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    /// The real file's workbook stream: what calamine reads from it.
    fn workbook() -> Vec<u8> {
        let mut file = cfb::CompoundFile::open(Cursor::new(fixture("roster.xls"))).unwrap();
        let mut stream = Vec::new();
        file.open_stream("/Workbook").unwrap().read_to_end(&mut stream).unwrap();
        stream
    }

    /// A compound file holding `streams` (path, body), storages made as needed.
    fn container(streams: &[(&str, &[u8])]) -> Vec<u8> {
        let mut file = cfb::CompoundFile::create(Cursor::new(Vec::new())).unwrap();
        for (path, body) in streams {
            if let Some(parent) = std::path::Path::new(path).parent().filter(|p| *p != std::path::Path::new("/")) {
                file.create_storage_all(parent).unwrap();
            }
            file.create_stream(path).unwrap().write_all(body).unwrap();
        }
        file.flush().unwrap();
        file.into_inner().into_inner()
    }

    fn check(bytes: &[u8]) -> Result<Option<Vec<u8>>, FileError> {
        check_ole_container(&mut Cursor::new(bytes), bytes.len() as u64)
    }

    /// A sheet declaring all of IV65536: calamine would reserve 16.7 M cells for it.
    fn spread() -> Vec<u8> {
        let mut stream = workbook();
        let dims = stream.windows(4).position(|w| w == [0x00, 0x02, 0x0E, 0x00]).expect("a DIMENSIONS record");
        stream[dims + 4..dims + 18].copy_from_slice(&[0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0]);
        stream
    }

    #[test]
    fn the_real_file_s_workbook_is_found_and_measured() {
        let bytes = fixture("roster.xls");
        let chosen = workbook_entry(&mut Cursor::new(&bytes), bytes.len() as u64).unwrap().unwrap();
        assert_eq!((chosen.name.as_str(), chosen.len, chosen.namesakes), ("Workbook", workbook().len() as u64, 1));
        assert_eq!(check(&bytes).unwrap(), Some(workbook()));
        // Its workbook given a spread sheet, in the file's own place: refused, as before.
        let bomb = container(&[("/Workbook", &spread())]);
        assert!(matches!(check(&bomb), Err(FileError::TooSpread { format: "XLS", .. })), "{:?}", check(&bomb).map(|_| ()));
    }

    /// calamine takes the first entry named Workbook whatever its case or folder: each of these
    /// reached calamine unmeasured before (the guard looked for "/Workbook" and "/Book" only).
    #[test]
    fn a_workbook_the_guard_would_not_measure_is_refused_or_measured() {
        // Named in capitals, at the root: the one calamine reads, and measured.
        let capitals = container(&[("/WORKBOOK", &spread())]);
        assert!(matches!(check(&capitals), Err(FileError::TooSpread { format: "XLS", .. })));
        let fine = container(&[("/WORKBOOK", &workbook())]);
        assert_eq!(check(&fine).unwrap(), Some(workbook()));
        // In a folder, or two of the name: which one calamine reads is not the guard's to guess.
        for streams in [vec![("/Sub/Workbook", spread())], vec![("/Workbook", workbook()), ("/Sub/WorkBook", spread())]] {
            let streams: Vec<(&str, &[u8])> = streams.iter().map(|(p, b)| (*p, b.as_slice())).collect();
            let err = check(&container(&streams)).unwrap_err();
            assert!(matches!(&err, FileError::Corrupt { format: "XLS", detail } if detail.contains("ambiguous")), "{err:?}");
        }
        // "Book" (BIFF5) when there is no Workbook.
        let book = container(&[("/Book", &workbook())]);
        assert_eq!(check(&book).unwrap(), Some(workbook()));
    }

    /// A directory chain that loops, or a header naming more FAT sectors than the file has:
    /// refused before calamine would follow it.
    #[test]
    fn directories_calamine_would_loop_on_are_refused() {
        let mut bytes = fixture("roster.xls");
        let dir_start = u32::from_le_bytes(bytes[48..52].try_into().unwrap());
        // The FAT's entry for the directory's first sector points back at it.
        let fat_first = u32::from_le_bytes(bytes[76..80].try_into().unwrap());
        let at = (fat_first as usize + 1) * 512 + dir_start as usize * 4;
        bytes[at..at + 4].copy_from_slice(&dir_start.to_le_bytes());
        assert!(workbook_entry(&mut Cursor::new(&bytes), bytes.len() as u64).is_err());
        assert!(matches!(check(&bytes), Err(FileError::Corrupt { format: "XLS", .. })));
        let mut many = fixture("roster.xls");
        for k in 0..109 {
            many[76 + 4 * k..80 + 4 * k].copy_from_slice(&0u32.to_le_bytes());
        }
        let err = workbook_entry(&mut Cursor::new(&many), 512 * 20).unwrap_err();
        assert!(err.to_string().contains("FAT sectors"), "{err}");
        // Cut anywhere: an error or an answer, never a panic.
        let whole = fixture("roster.xls");
        for cut in (0..whole.len()).step_by(97) {
            let _ = workbook_entry(&mut Cursor::new(&whole[..cut]), cut as u64);
        }
    }
}
