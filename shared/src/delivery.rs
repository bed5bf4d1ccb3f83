//! What happened to an activation email after SES took it: SES publishes delivery, bounce and
//! complaint events of the deployment's configuration set to EventBridge, whose rule invokes the
//! invites function with them; each is recorded on the invite it names (by the tags the send put
//! on it, and the recipient), so `rosterdrop invites` can list who to invite again.

use crate::error::Result;
use crate::model::InviteStatus;
use crate::services::Services;
use serde_json::Value;

/// Message tags every invite is sent with.
pub const KIND_TAG: &str = "rosterdrop_kind";
pub const INVITE: &str = "invite";
pub const TENANT_TAG: &str = "rosterdrop_tenant";

/// One SES event about an invite: its tenant, recipients, what happened and when.
#[derive(Debug, Clone, PartialEq)]
pub struct Feedback {
    pub tenant: String,
    pub recipients: Vec<String>,
    pub status: InviteStatus,
    pub reason: Option<String>,
    pub at: String,
}

/// The SES event inside an EventBridge event (`detail`), or an SES event record as SNS carries
/// it. `None`: not an event about one of our invites (another sender's mail, another event type).
pub fn parse(event: &Value) -> Option<Feedback> {
    let record = if event.get("detail").is_some_and(Value::is_object) { &event["detail"] } else { event };
    let mail = &record["mail"];
    let tag = |name: &str| mail["tags"][name].as_array().and_then(|v| v.first()).and_then(Value::as_str);
    if tag(KIND_TAG) != Some(INVITE) {
        return None;
    }
    let tenant = tag(TENANT_TAG)?.to_string();
    let kind = record["eventType"].as_str().or(record["notificationType"].as_str())?;
    let addresses = |list: &Value| -> Vec<String> {
        list.as_array()
            .map(|l| {
                l.iter()
                    .filter_map(|r| r["emailAddress"].as_str().or(r.as_str()))
                    .map(|e| crate::address::canonical(&e.trim().to_lowercase()).into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let (status, recipients, reason, at) = match kind {
        "Delivery" => {
            let d = &record["delivery"];
            (InviteStatus::Delivered, addresses(&d["recipients"]), None, d["timestamp"].as_str())
        }
        "Bounce" => {
            let b = &record["bounce"];
            let first = &b["bouncedRecipients"][0];
            let why = [b["bounceType"].as_str(), b["bounceSubType"].as_str(), first["diagnosticCode"].as_str()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(": ");
            (InviteStatus::Bounced, addresses(&b["bouncedRecipients"]), Some(why), b["timestamp"].as_str())
        }
        "Complaint" => {
            let c = &record["complaint"];
            let why =
                c["complaintFeedbackType"].as_str().map(|t| format!("marked as spam ({t})")).unwrap_or_else(|| "marked as spam".into());
            (InviteStatus::Complained, addresses(&c["complainedRecipients"]), Some(why), c["timestamp"].as_str())
        }
        _ => return None,
    };
    let at = at.or(mail["timestamp"].as_str()).map(str::to_string).unwrap_or_else(|| chrono::Utc::now().to_rfc3339());
    let reason = reason.map(|r| crate::wording::bounded(&r, 500));
    Some(Feedback { tenant, recipients, status, reason, at })
}

/// Record one SES event on the invites it names; how many invites it changed.
pub async fn record(svc: &Services, event: &Value) -> Result<u32> {
    let Some(f) = parse(event) else {
        tracing::info!("an email event that is not about an invite; ignored");
        return Ok(0);
    };
    let mut changed = 0;
    for email in &f.recipients {
        if svc.invites.record_delivery(&f.tenant, email, f.status, f.reason.as_deref(), &f.at).await? {
            changed += 1;
        }
        tracing::info!(tenant = %f.tenant, to = %crate::address::masked(email), status = f.status.as_str(), "invite delivery recorded");
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::memory::InviteState;
    use crate::testkit::Kit;

    fn fixture(name: &str) -> Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/ses").join(name);
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    /// SES-shaped events from files, through the invites function's handler: a bounce, a
    /// complaint and a delivery each mark the invite they name; mail that is not an invite is
    /// ignored; a late delivery does not hide a bounce; the bounced address fixed with NewEmail
    /// and invited again has a new pending invite.
    #[tokio::test]
    async fn bounces_complaints_and_deliveries_mark_the_right_invites() {
        let mut kit = Kit::new(|_| {}).await;
        kit.run(
            "invite.csv",
            "Email,FirstName,InviteUser\ntypo@acme.example.com,Ty,TRUE\ngrumpy@acme.example.com,Gu,TRUE\nok@acme.example.com,Ok,TRUE\n",
        )
        .await;
        assert_eq!(crate::invites::sweep(&kit.svc, chrono::Utc::now() + chrono::Duration::seconds(1)).await.unwrap(), 3);
        let now = chrono::Utc::now();
        for (file, recorded) in [("bounce.json", 1), ("complaint.json", 1), ("delivery.json", 1), ("not-an-invite.json", 0)] {
            let report = crate::monitor::on_event(&kit.svc, fixture(file), now).await.unwrap();
            assert_eq!(report["recorded"], recorded, "{file}");
        }
        let invites = kit.mem.invites.clone();
        let state = move |e: &str| invites.of("acme", e).unwrap().0;
        assert_eq!(
            (state("typo@acme.example.com"), state("grumpy@acme.example.com"), state("ok@acme.example.com")),
            (InviteState::Bounced, InviteState::Complained, InviteState::Delivered)
        );
        let list = kit.svc.invites.list("acme").await.unwrap();
        let typo = list.iter().find(|i| i.email == "typo@acme.example.com").unwrap();
        assert_eq!(typo.reason.as_deref(), Some("Permanent: General: smtp; 550 5.1.1 user unknown"));
        // A delivery reported after the bounce does not hide it.
        let mut late = fixture("delivery.json");
        late["detail"]["delivery"]["recipients"] = serde_json::json!(["typo@acme.example.com"]);
        crate::monitor::on_event(&kit.svc, late, now).await.unwrap();
        assert_eq!(state("typo@acme.example.com"), InviteState::Bounced);

        // The re-invite roster, the address fixed.
        let again = kit
            .run("reinvite.csv", "Action,Email,NewEmail,FirstName,Status\nInvite,typo@acme.example.com,ty@acme.example.com,Ty,bounced\n")
            .await;
        assert_eq!(
            kit.outcomes(&again).await[0].1.split(';').next().unwrap(),
            "email changed from typo@acme.example.com to ty@acme.example.com"
        );
        assert_eq!(state("ty@acme.example.com"), InviteState::Pending);
    }

    fn any_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "[\\PC]{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::btree_map("[a-zA-Z]{1,16}", inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// An SES event of any shape in its bounce, delivery, complaint, tags or recipients parses
        /// or is ignored, never panics; what it yields is bounded.
        #[test]
        fn events_of_any_shape_never_panic(bounce in any_json(), tags in any_json(), kind in "[A-Za-z]{0,10}") {
            let mut e = fixture("bounce.json");
            e["detail"]["bounce"] = bounce;
            if kind.len() % 2 == 0 {
                e["detail"]["mail"]["tags"] = tags;
            }
            if !kind.is_empty() {
                e["detail"]["eventType"] = kind.into();
            }
            if let Some(f) = parse(&e) {
                proptest::prop_assert!(f.reason.as_ref().is_none_or(|r| r.chars().count() <= 500));
            }
        }
    }

    #[test]
    fn an_event_without_our_tags_or_of_another_kind_is_not_ours() {
        assert!(parse(&fixture("not-an-invite.json")).is_none());
        let mut open = fixture("delivery.json");
        open["detail"]["eventType"] = "Open".into();
        assert!(parse(&open).is_none());
        let mut broken = fixture("bounce.json");
        broken["detail"]["bounce"] = Value::Null;
        let f = parse(&broken).expect("still ours");
        assert!(f.recipients.is_empty(), "no recipients: nothing to record, no panic");
    }
}
