//! A chunk read as it arrives: its lines are parsed piece by piece, and the users its rows decide
//! from are read in `BatchGetItem`-sized batches sent as soon as each batch is known. The users'
//! read is apply's longest wait; the chunk's transfer and parse now run under it, not before it.

use crate::error::Result;
use crate::model::RowOp;
use crate::ports::{Consistency, Pieces, UsersRead};
use crate::services::Services;
use crate::wire::{LineSplitter, parse_line};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use std::collections::HashSet;

/// Keys a `BatchGetItem` takes.
const BATCH: usize = 100;

/// No chunk line is shorter (`{"row":1,"action":"create","type":"org","name":"a"}` is 51
/// bytes): what a chunk's length allows at most, whatever its first lines suggest.
const MIN_LINE: usize = 40;

/// The chunk's rows and the stored users of the emails `wanted` picks (each read once).
pub(crate) async fn read_chunk(
    svc: &Services,
    tenant: &str,
    pieces: Pieces,
    read: Consistency,
    wanted: impl Fn(&RowOp) -> Option<&String>,
) -> Result<(Vec<RowOp>, UsersRead)> {
    let (mut ops, mut lines, mut found) = (Vec::<RowOp>::new(), LineSplitter::default(), UsersRead::default());
    let (mut asked, mut batch, mut reads) = (HashSet::new(), Vec::new(), FuturesUnordered::new());
    let ask = |emails: Vec<String>| async move { svc.directory.read_users(tenant, &emails, read).await };
    // The rows the chunk holds, once its first lines say (`expected_rows`).
    let (len, mut received, mut expected) = (pieces.len, 0usize, None);
    let mut pieces = pieces.stream.fuse();
    loop {
        tokio::select! {
            // Pieces first: a batch goes out as soon as it is known.
            biased;
            piece = pieces.next() => {
                let parsed = ops.len();
                let mut keep = |l: &[u8]| parse_line("chunk", l).map(|op| ops.push(op));
                let done = match piece {
                    Some(piece) => {
                        let piece = piece?;
                        received += piece.len();
                        lines.push(&piece, &mut keep).map(|()| false)?
                    }
                    None => std::mem::take(&mut lines).finish(&mut keep).map(|()| true)?,
                };
                if let (None, Some(len), 1..) = (expected, len, ops.len()) {
                    // Sized once, for as many rows as the first whole lines' length says the
                    // chunk holds: grown instead, every row read so far would move at each
                    // doubling (a profile of a chunk of unchanged rows showed it).
                    let rows = expected_rows(len, received - lines.pending(), ops.len());
                    ops.reserve(rows.saturating_sub(ops.len()));
                    expected = Some(rows);
                }
                for email in ops[parsed..].iter().filter_map(&wanted) {
                    if asked.is_empty() {
                        // The users' maps likewise, once the chunk is known to read any (a
                        // chunk of creates reads none).
                        let rows = expected.unwrap_or_default();
                        asked.reserve(rows);
                        found.live.reserve(rows);
                    }
                    if asked.insert(email.clone()) {
                        batch.push(email.clone());
                    }
                    if batch.len() == BATCH {
                        reads.push(ask(std::mem::take(&mut batch)));
                    }
                }
                if done {
                    break;
                }
            }
            Some(users) = reads.next(), if !reads.is_empty() => {
                // Sized for every email asked so far, not grown batch by batch.
                found.live.reserve(asked.len().saturating_sub(found.live.len()));
                found.merge(users?);
            }
        }
    }
    if !batch.is_empty() {
        reads.push(ask(batch));
    }
    found.live.reserve(asked.len().saturating_sub(found.live.len()));
    while let Some(users) = reads.next().await {
        found.merge(users?);
    }
    Ok((ops, found))
}

/// The rows a chunk of `len` bytes holds, from the `rows` whole lines that took its first
/// `received` bytes, and an eighth more (later lines may be shorter); never more than `len`
/// allows nor more than the largest configurable chunk (a larger one, of a phase past 5 million
/// rows, grows).
fn expected_rows(len: u64, received: usize, rows: usize) -> usize {
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    let per_row = (received / rows.max(1)).max(MIN_LINE);
    let rows = len / per_row;
    rows.saturating_add(rows / 8 + 1).min(len / MIN_LINE + 1).min(crate::config::MAX_CHUNK_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::memory::lock;
    use crate::model::{Action, Target, UserFields, UserStatus};
    use futures::SinkExt;

    fn line(row: u32, action: Action, email: &str) -> String {
        let op = RowOp {
            row,
            action,
            target: Target::User { email: email.into(), fields: UserFields::default() },
            created_in_file: vec![],
            restore: None,
        };
        serde_json::to_string(&op).unwrap() + "\n"
    }

    /// What apply reads for a chunk.
    fn wanted(op: &RowOp) -> Option<&String> {
        crate::apply::read_before(op, false)
    }

    /// 250 updates of 240 users (ten named twice), 30 creates and an organization.
    fn chunk() -> String {
        let mut body = String::new();
        for i in 0..250u32 {
            body += &line(i + 2, Action::Update, &format!("u{}@x.com", i % 240));
            if i % 8 == 0 {
                body += &line(1000 + i, Action::Create, &format!("new{i}@x.com"));
            }
        }
        let org = RowOp { row: 999, action: Action::Upsert, target: Target::org("Sales"), created_in_file: vec![], restore: None };
        body + &serde_json::to_string(&org).unwrap()
    }

    #[tokio::test]
    async fn every_wanted_user_is_read_once_in_batches_of_at_most_a_hundred() {
        let (svc, mem) = Services::memory(crate::Config::local());
        mem.directory.seed_user("acme", "u7@x.com", UserStatus::Active);
        mem.store.put_version("c", chunk().into_bytes());
        let pieces = svc.store.get_pieces("c").await.unwrap().unwrap();
        let (ops, found) = read_chunk(&svc, "acme", pieces, Consistency::Strong, wanted).await.unwrap();
        assert_eq!(ops.len(), 250 + 32 + 1, "every line, the last without its newline too");
        assert_eq!(found.live.keys().collect::<Vec<_>>(), ["u7@x.com"]);
        let reads = lock(&mem.directory.reads).clone();
        assert_eq!(reads.iter().map(Vec::len).collect::<Vec<_>>(), [100, 100, 40]);
        let mut read: Vec<String> = reads.concat();
        read.sort();
        let mut expected: Vec<String> = (0..240).map(|i| format!("u{i}@x.com")).collect();
        expected.sort();
        assert_eq!(read, expected, "updates' users once each; no create, no organization");
    }

    #[tokio::test]
    async fn a_batch_is_read_before_the_rest_of_the_chunk_has_arrived() {
        let (svc, mem) = Services::memory(crate::Config::local());
        let (mut tx, rx) = futures::channel::mpsc::unbounded::<Result<Vec<u8>>>();
        let first: String = (0..100).map(|i| line(i + 2, Action::Upsert, &format!("u{i}@x.com"))).collect();
        let feed = async {
            tx.send(Ok(first.into_bytes())).await.unwrap();
            // The chunk's end has not arrived: the first batch's read must go out anyway.
            for _ in 0..1000 {
                if !lock(&mem.directory.reads).is_empty() {
                    break;
                }
                tokio::task::yield_now().await;
            }
            let early = lock(&mem.directory.reads).len();
            tx.send(Ok(line(500, Action::Upsert, "last@x.com").into_bytes())).await.unwrap();
            drop(tx);
            early
        };
        let pieces = Pieces { len: None, stream: Box::pin(rx) };
        let (read, early) = tokio::join!(read_chunk(&svc, "acme", pieces, Consistency::Strong, wanted), feed);
        assert_eq!(early, 1, "the first hundred were read while the chunk was still arriving");
        assert_eq!(read.unwrap().0.len(), 101);
        assert_eq!(lock(&mem.directory.reads).len(), 2);
    }

    #[test]
    fn a_chunk_is_sized_from_its_first_lines_within_what_its_length_and_the_largest_chunk_allow() {
        // 2,000 lines of 150 bytes, the first 16 KB received: about 2,000 rows, an eighth more.
        let rows = expected_rows(300_000, 16_384, 16_384 / 150);
        assert!((2_000..=2_400).contains(&rows), "{rows}");
        // Lines shorter than any chunk line can be, or a length no chunk has: bounded all the same.
        assert_eq!(expected_rows(4_000, 4_000, 4_000), 4_000 / MIN_LINE + 1);
        assert_eq!(expected_rows(u64::MAX, 100, 1), crate::config::MAX_CHUNK_SIZE);
        assert_eq!(expected_rows(0, 0, 0), 1);
    }

    #[tokio::test]
    async fn a_chunk_is_sized_from_its_length_and_sets_room_for_users_aside_only_if_it_reads_them() {
        let (svc, mem) = Services::memory(crate::Config::local());
        let creates: String = (0..300).map(|i| line(i + 2, Action::Create, &format!("n{i}@x.com"))).collect();
        mem.store.put_version("creates", creates.into_bytes());
        let pieces = svc.store.get_pieces("creates").await.unwrap().unwrap();
        let (ops, found) = read_chunk(&svc, "acme", pieces, Consistency::Strong, wanted).await.unwrap();
        assert_eq!((ops.len(), found.live.capacity()), (300, 0), "a chunk of creates reads no user");
        // Grown by doubling it would hold 512.
        assert!((300..=400).contains(&ops.capacity()), "its rows sized once from its length: {}", ops.capacity());
    }

    #[tokio::test]
    async fn a_chunk_whose_stated_length_is_far_beyond_its_body_is_read_whole() {
        let (svc, mem) = Services::memory(crate::Config::local());
        mem.directory.seed_user("acme", "u7@x.com", UserStatus::Active);
        let body = chunk().into_bytes();
        for len in [u64::MAX, 1, 0] {
            let pieces: Vec<Result<Vec<u8>>> = body.chunks(777).map(|p| Ok(p.to_vec())).collect();
            let pieces = Pieces { len: Some(len), stream: Box::pin(futures::stream::iter(pieces)) };
            let (ops, found) = read_chunk(&svc, "acme", pieces, Consistency::Strong, wanted).await.unwrap();
            assert_eq!(ops.len(), 250 + 32 + 1, "stated length {len}");
            assert_eq!(found.live.keys().collect::<Vec<_>>(), ["u7@x.com"]);
        }
    }

    #[tokio::test]
    async fn a_broken_line_or_a_broken_transfer_fails_the_chunk() {
        let (svc, mem) = Services::memory(crate::Config::local());
        mem.store.put_version("c", format!("{}{{\"row\":3,\"act", line(2, Action::Update, "a@x.com")).into_bytes());
        let pieces = svc.store.get_pieces("c").await.unwrap().unwrap();
        let err = read_chunk(&svc, "acme", pieces, Consistency::Strong, wanted).await.unwrap_err();
        assert!(matches!(err, crate::error::Error::Corrupt { .. }), "{err:?}");
        assert!(err.to_string().contains("chunk"), "{err}");

        let transient = crate::error::Error::Transient { service: "s3", operation: "GetObject", message: "reset".into() };
        let pieces = futures::stream::iter([Ok(line(2, Action::Update, "a@x.com").into_bytes()), Err(transient)]);
        let pieces = Pieces { len: Some(1 << 40), stream: Box::pin(pieces) };
        let err = read_chunk(&svc, "acme", pieces, Consistency::Strong, wanted).await.unwrap_err();
        assert!(err.is_retryable(), "a transfer cut off is retried: {err}");
    }
}
