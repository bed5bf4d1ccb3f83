//! Row parsing and validation: a valid header followed by fuzzed rows, through the same
//! `prepare` ingest runs. Every data row ends as exactly one operation or one outcome, and the
//! chunk line ingest writes for an operation is byte for byte serde's JSON of the `RowOp`, and
//! reads back as that `RowOp`.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shared::ingest::stream::{Ingester, OpSink};
use shared::ingest::view::RowView;
use shared::ingest::{decode, prepare};
use shared::model::{Mode, Outcome, Tenant};

/// Checks each operation's hand-written chunk line against serde's.
struct SameJson(Vec<u8>);

impl OpSink for SameJson {
    fn op(&mut self, op: &RowView<'_>) -> std::io::Result<()> {
        self.0.clear();
        op.write_json(&mut self.0);
        let owned = op.to_op();
        assert_eq!(self.0, serde_json::to_vec(&owned).unwrap(), "chunk line differs from serde's");
        // And apply reads it back as it was (`row_line`).
        assert_eq!(serde_json::from_slice::<shared::model::RowOp>(&self.0).unwrap(), owned, "chunk line reads back differently");
        Ok(())
    }
    fn outcome(&mut self, _: Outcome) -> std::io::Result<()> {
        Ok(())
    }
    fn retract(&mut self, _: &[shared::ingest::validate::Duplicate]) -> std::io::Result<()> {
        Ok(())
    }
}

const HEADER: &[u8] = b"Email,FirstName,LastName,Type,Action,RoleName,Organization,Department,Groups,Supervisor,Parent,Username,Phone,ScheduledDate,InviteUser\n";

fuzz_target!(init: quiet_recovered_panics(), |data: &[u8]| {
    let mut bytes = HEADER.to_vec();
    bytes.extend_from_slice(data);
    let mode = match data.first().map(|b| b % 3) {
        Some(0) => Mode::Add,
        Some(1) => Mode::Replace,
        _ => Mode::Upsert,
    };
    let tenant = Tenant::offline();
    if let Ok(p) = prepare(&bytes, &tenant, mode) {
        let rows: usize = p.tables.iter().map(|t| t.rows.len()).sum();
        let mut ids: Vec<u32> = p.ops.iter().map(|o| o.row).chain(p.outcomes.iter().map(|o| o.row)).collect();
        ids.sort_unstable();
        let before = ids.len();
        ids.dedup();
        assert_eq!(before, ids.len(), "a row with two results");
        assert_eq!(ids.len(), rows, "a row without a result");
        let mut ingester = Ingester::new(&tenant, mode, SameJson(Vec::new()));
        decode::replay(&p.tables, &mut ingester).unwrap();
    }
});

/// Decoding recovers from panics inside the spreadsheet readers (a damaged file is a rejection).
/// libFuzzer's own hook would abort on those before they are caught; a panic that escapes is
/// still caught by libfuzzer-sys around the target and aborts, so real findings still crash.
fn quiet_recovered_panics() {
    std::panic::set_hook(Box::new(|info| eprintln!("panic (recovered unless the run aborts): {info}")));
}
