//! Operational metrics, published as CloudWatch embedded metric format (EMF) log lines: Lambda
//! ships stdout to CloudWatch Logs, which turns these lines into metrics without an API call.

use crate::error::Result;
use crate::services::Services;

pub const NAMESPACE: &str = "rosterdrop";
pub const JOB_AGE_METRIC: &str = "OldestOpenJobAgeSeconds";

/// Age in seconds of the oldest job not yet COMPLETED or REJECTED (0 when none is open).
pub async fn oldest_open_job_age(svc: &Services, now: chrono::DateTime<chrono::Utc>) -> Result<i64> {
    Ok(match svc.jobs.oldest_open().await? {
        Some((_, received_at)) => chrono::DateTime::parse_from_rfc3339(&received_at)
            .map(|t| (now - t.with_timezone(&chrono::Utc)).num_seconds().max(0))
            .unwrap_or(0),
        None => 0,
    })
}

/// One EMF line carrying a single metric.
pub fn emf_line(metric: &str, value: i64, now: chrono::DateTime<chrono::Utc>) -> String {
    serde_json::json!({
        "_aws": {
            "Timestamp": now.timestamp_millis(),
            "CloudWatchMetrics": [{ "Namespace": NAMESPACE, "Dimensions": [[]], "Metrics": [{ "Name": metric, "Unit": "Seconds" }] }]
        },
        metric: value
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emf_line_names_namespace_metric_and_value() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-21T10:00:00Z").unwrap().with_timezone(&chrono::Utc);
        let v: serde_json::Value = serde_json::from_str(&emf_line(JOB_AGE_METRIC, 42, now)).unwrap();
        assert_eq!(v["_aws"]["CloudWatchMetrics"][0]["Namespace"], "rosterdrop");
        assert_eq!(v["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Name"], JOB_AGE_METRIC);
        assert_eq!(v["_aws"]["Timestamp"], 1_795_255_200_000i64);
        assert_eq!(v[JOB_AGE_METRIC], 42);
    }
}
