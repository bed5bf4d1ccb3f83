#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! Writes the demo's sample roster: `cargo run -p tests --example make_sample -- samples/demo-roster.xlsx 1000`.

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().unwrap_or_else(|| "samples/demo-roster.xlsx".into());
    let users: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(996);
    let (rows, ok) = tests::sample_roster(users);
    std::fs::write(&path, tests::xlsx_bytes("Roster", &rows)).expect("write sample");
    println!("{path}: {} rows, {} expected to fail", ok.len(), ok.iter().filter(|g| !**g).count());
}
