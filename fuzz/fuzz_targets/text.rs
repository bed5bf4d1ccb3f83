//! Delimited text only (the zip/OLE magic is never at the start): encoding detection, BOMs,
//! delimiter sniffing, quote checks and the csv reader.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shared::ingest::decode;

fuzz_target!(init: quiet_recovered_panics(), |data: &[u8]| {
    let mut bytes = Vec::with_capacity(data.len() + 1);
    if data.starts_with(b"PK") || data.starts_with(&[0xD0, 0xCF]) {
        bytes.push(b' ');
    }
    bytes.extend_from_slice(data);
    if let Ok(t) = decode::decode(&bytes) {
        assert!(t.delimiter.is_some() && t.encoding.is_some());
        assert!(t.headers.last().is_none_or(|h| !h.trim().is_empty()));
    }
});

/// Decoding recovers from panics inside the spreadsheet readers (a damaged file is a rejection).
/// libFuzzer's own hook would abort on those before they are caught; a panic that escapes is
/// still caught by libfuzzer-sys around the target and aborts, so real findings still crash.
fn quiet_recovered_panics() {
    std::panic::set_hook(Box::new(|info| eprintln!("panic (recovered unless the run aborts): {info}")));
}
