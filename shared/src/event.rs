//! S3 event notifications -> the objects they name. The same JSON reaches the Lambdas directly
//! and the local runner through SQS.

use aws_lambda_events::s3::S3Event;

#[derive(Debug, Clone, PartialEq)]
pub struct ObjectRef {
    pub bucket: String,
    /// Decoded key (S3 sends keys form-urlencoded: spaces as '+').
    pub key: String,
    pub size: Option<i64>,
    pub version_id: Option<String>,
    /// Orders events for one key; identical on a redelivered event.
    pub sequencer: Option<String>,
    pub etag: Option<String>,
    /// When S3 finished storing the object: with the sequencer, the upload's order.
    pub event_time: Option<chrono::DateTime<chrono::Utc>>,
}

/// Object-created records of an event; other records (deletes, test events) are dropped.
pub fn objects(event: &S3Event) -> Vec<ObjectRef> {
    event
        .records
        .iter()
        .filter(|r| r.event_name.as_deref().is_none_or(|n| n.starts_with("ObjectCreated")))
        .filter_map(|r| {
            let key = r.s3.object.key.as_deref()?;
            Some(ObjectRef {
                bucket: r.s3.bucket.name.clone().unwrap_or_default(),
                key: decode_key(key),
                size: r.s3.object.size,
                version_id: r.s3.object.version_id.clone().filter(|v| !v.is_empty() && v != "null"),
                sequencer: r.s3.object.sequencer.clone(),
                etag: r.s3.object.e_tag.clone(),
                event_time: Some(r.event_time),
            })
        })
        .collect()
}

/// Parse an S3 event from JSON; `None` for the `s3:TestEvent` S3 sends when notifications are set up.
pub fn parse(json: &str) -> Option<S3Event> {
    serde_json::from_str::<S3Event>(json).ok().filter(|e| !e.records.is_empty())
}

pub fn decode_key(key: &str) -> String {
    let spaced = key.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced).decode_utf8_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_form_url_decoded() {
        assert_eq!(decode_key("incoming/acme/Q3+roster%282%29.csv"), "incoming/acme/Q3 roster(2).csv");
        assert_eq!(decode_key("incoming/acme/a%2Bb.csv"), "incoming/acme/a+b.csv");
    }

    #[test]
    fn put_event_fixture_yields_the_object() {
        let json = include_str!("../../tests/fixtures/events/s3-put.json");
        let event = parse(json).expect("event");
        let objs = objects(&event);
        assert_eq!(objs.len(), 1);
        assert_eq!(objs[0].key, "incoming/acme/Spring roster.csv");
        assert_eq!(objs[0].bucket, "rosterdrop-local");
        assert_eq!(objs[0].sequencer.as_deref(), Some("0065F1C2A3B4C5D6E7"));
    }

    #[test]
    fn test_event_is_ignored() {
        let json = include_str!("../../tests/fixtures/events/s3-test-event.json");
        assert!(parse(json).is_none());
    }
}
