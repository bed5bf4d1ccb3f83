//! Format detection and decoding of any bytes: CSV/TSV text in any encoding, XLSX, XLS, ODS.
//! A file is either a table or a `FileError`; never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shared::ingest::decode;

fuzz_target!(init: quiet_recovered_panics(), |data: &[u8]| {
    if let Ok(tables) = decode::decode_all(data) {
        for t in &tables {
            // Row numbers the user sees are strictly increasing within a table.
            assert!(t.rows.windows(2).all(|w| w[0].0 < w[1].0));
            assert!(t.rows.iter().all(|(n, _)| *n > t.header_row));
        }
    }
});

/// Decoding recovers from panics inside the spreadsheet readers (a damaged file is a rejection).
/// libFuzzer's own hook would abort on those before they are caught; a panic that escapes is
/// still caught by libfuzzer-sys around the target and aborts, so real findings still crash.
fn quiet_recovered_panics() {
    std::panic::set_hook(Box::new(|info| eprintln!("panic (recovered unless the run aborts): {info}")));
}
