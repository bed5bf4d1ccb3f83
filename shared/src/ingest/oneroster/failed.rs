//! The failed-records bundle: the records behind the rows that failed, as the district sent them,
//! each file with Outcome and Message appended, under a manifest that marks them delta. Fixed and
//! dropped again it applies those records and nothing else: a delta never disables anyone, and
//! what they reference that did succeed is found in the directory (ExternalIds, organizations' ids).

use super::{Bundle, FileMode, RECORDS, records_of};
use crate::ingest::decode::Table;
use std::collections::BTreeMap;
use std::io::Write;

/// The column our outcome goes in (OneRoster's own `status` column is the record's).
pub const OUTCOME: &str = "Outcome";

/// What one record of the new bundle says: its row's Status and Message, or, for a record another
/// failed row was built from (a role, an enrollment), which row needs it.
type Notes = BTreeMap<String, BTreeMap<u32, (String, String)>>;

/// `failed`: the tables of the failed-rows workbook (sheets `orgs.csv`, `users.csv`, each row
/// with its `OneRosterRecords` and `Message`).
pub fn failed_bundle(bundle: &Bundle, failed: &[Table]) -> Result<Vec<u8>, String> {
    let mut notes: Notes = BTreeMap::new();
    for t in failed {
        let col = |name: &str| t.headers.iter().position(|h| h.eq_ignore_ascii_case(name));
        // The failed-rows file holds failures only: it has a Message column and no Status.
        let (Some(rec), Some(message)) = (col(RECORDS), col("Message")) else { continue };
        for (_, cells) in &t.rows {
            let cell = |i: usize| cells.get(i).cloned().unwrap_or_default();
            let records = records_of(&cell(rec));
            let Some((own_file, own_line)) = records.first().cloned() else { continue };
            for (i, (file, line)) in records.into_iter().enumerate() {
                let note = if i == 0 {
                    ("Failure".to_string(), cell(message))
                } else {
                    (String::new(), format!("needed by {own_file}.csv line {own_line}"))
                };
                let slot = notes.entry(file).or_default().entry(line).or_insert_with(|| note.clone());
                // A record that failed itself says so, even when another row needed it first.
                if slot.0.is_empty() && !note.0.is_empty() {
                    *slot = note;
                }
            }
        }
    }
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let options = zip::write::SimpleFileOptions::default();
    zip.start_file("manifest.csv", options).map_err(|e| err(&e))?;
    let mut manifest = format!("propertyName,value\nmanifest.version,1.0\noneroster.version,{}\n", bundle.version.label());
    for name in [
        "academicSessions",
        "categories",
        "classes",
        "classResources",
        "courses",
        "courseResources",
        "demographics",
        "enrollments",
        "lineItems",
        "orgs",
        "resources",
        "results",
        "roles",
        "users",
    ] {
        let listed = notes.contains_key(name) && bundle.files.contains_key(name) && bundle.mode_of(name) != FileMode::Absent;
        manifest += &format!("file.{name},{}\n", if listed { "delta" } else { "absent" });
    }
    zip.write_all(manifest.as_bytes()).map_err(|e| err(&e))?;
    for (name, lines) in &notes {
        let Some(file) = bundle.files.get(name.as_str()) else { continue };
        let by_line: BTreeMap<u32, &Vec<String>> = file.table.rows.iter().map(|(n, c)| (*n, c)).collect();
        let mut w = csv::Writer::from_writer(Vec::new());
        // A failed-records bundle dropped again carries our two columns already: replaced, not
        // added again (each loop grew the files by a pair).
        let ours = |h: &str| h.trim().eq_ignore_ascii_case(OUTCOME) || h.trim().eq_ignore_ascii_case("Message");
        let keep: Vec<usize> = (0..file.table.headers.len()).filter(|&i| !ours(&file.table.headers[i])).collect();
        let mut header: Vec<&str> = keep.iter().map(|&i| file.table.headers[i].as_str()).collect();
        // Not "Status": OneRoster files have a status column of their own.
        header.extend([OUTCOME, "Message"]);
        w.write_record(&header).map_err(|e| err(&e))?;
        for (line, (status, message)) in lines {
            let Some(cells) = by_line.get(line) else { continue };
            let mut row: Vec<String> = keep
                .iter()
                .map(|&i| cells.get(i).map(|c| crate::finalize::write::neutralise(c).into_owned()).unwrap_or_default())
                .collect();
            row.push(status.clone());
            row.push(crate::finalize::write::neutralise(message).into_owned());
            w.write_record(&row).map_err(|e| err(&e))?;
        }
        let bytes = w.into_inner().map_err(|e| err(&e))?;
        zip.start_file(format!("{name}.csv"), options).map_err(|e| err(&e))?;
        zip.write_all(&bytes).map_err(|e| err(&e))?;
    }
    Ok(zip.finish().map_err(|e| err(&e))?.into_inner())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{bundle, edit};
    use crate::ingest::decode::{self, archive};
    use crate::testkit::Kit;

    fn sheets(bytes: &[u8]) -> Vec<decode::Table> {
        decode::decode_all(bytes).unwrap()
    }

    fn status_of(t: &decode::Table, line: u32) -> (String, String) {
        let s = t.headers.iter().position(|h| h == "Status").unwrap();
        let row = &t.rows.iter().find(|(n, _)| *n == line).unwrap_or_else(|| panic!("line {line}: {t:?}")).1;
        (row[s].clone(), row[s + 1].clone())
    }

    /// The issue's loop: a bundle with bad records answers line by line in its own files' terms,
    /// and its failed records come back as a delta bundle that, fixed, applies them and only them.
    fn zip_entry(zip: &[u8], name: &str) -> Vec<u8> {
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(zip)).unwrap();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut zip.by_name(name).unwrap(), &mut bytes).unwrap();
        bytes
    }

    #[tokio::test]
    async fn failed_records_come_back_as_a_delta_bundle_that_applies_once_fixed() {
        let mut kit = Kit::new(|t| t.holds = crate::model::Holds::off()).await;
        let bad = bundle("district-1.1", |f| {
            edit(f, "users.csv", |t| {
                t.replace("org-s2,student,ohaddad", "org-s9,student,ohaddad")
                    .replace("org-s1,guardian,pnguyen", "org-s1,administrator,pnguyen")
                    .replace(",Pat,Nguyen,", ",=Pat,Nguyen,")
            })
        });
        let job = kit.run("district.zip", &bad).await;
        let summary = kit.summary(&job).await;
        // Orgs 3 + users 8: the guardian (admin role), the student of an unknown school, and the
        // two students naming that guardian.
        assert_eq!((summary.counts.success, summary.counts.failure), (7, 4), "{summary:?}");
        assert_eq!(summary.mode, "replace", "a bulk bundle is the whole list");
        assert_eq!(summary.format.as_deref(), Some("OneRoster"));
        let result = sheets(&kit.svc.store.get(summary.result_key.as_ref().unwrap()).await.unwrap().unwrap());
        assert_eq!(
            result.iter().map(|t| t.sheet.clone().unwrap()).collect::<Vec<_>>(),
            ["orgs.csv", "users.csv", "classes.csv", "enrollments.csv", "Problems"]
        );
        assert_eq!(status_of(&result[0], 3).0, "Created");
        let (status, message) = status_of(&result[1], 4);
        assert_eq!(status, "Failure");
        assert!(message.contains("administrator role"), "{message}");
        assert!(status_of(&result[1], 8).1.contains("\"org-s9\" is in no file of this bundle"));
        assert_eq!(status_of(&result[3], 6), ("Read".into(), "student \"usr-st3\" in class \"cls-2\": read with users.csv line 8".into()));

        let key = summary.failed_rows_key.clone().unwrap();
        assert!(key.ends_with("district-failed-records.zip"), "{key}");
        let zip = kit.svc.store.get(&key).await.unwrap().unwrap();
        let files = archive::read_files(&mut std::io::Cursor::new(&zip), "", archive::MAX_ARCHIVE_BYTES).unwrap();
        let text = |name: &str| files.iter().find(|e| e.name == name).and_then(|e| e.table.clone()).unwrap_or_else(|| panic!("{name}"));
        let manifest = text("manifest.csv");
        let mode = |file: &str| manifest.rows.iter().find(|(_, r)| r[0] == format!("file.{file}")).unwrap().1[1].clone();
        assert_eq!(
            (mode("users"), mode("enrollments"), mode("orgs"), mode("classes")),
            ("delta".into(), "delta".into(), "absent".into(), "absent".into())
        );
        let users = text("users.csv");
        let ids: Vec<&str> = users.rows.iter().map(|(_, r)| r[0].as_str()).collect();
        assert_eq!(ids, ["usr-g1", "usr-st1", "usr-st2", "usr-st3"]);
        assert_eq!(users.headers[users.headers.len() - 2..], ["Outcome", "Message"]);
        // A value a spreadsheet would run is kept from running (written `="=Pat"`, a formula of
        // one string), and reads back as it was sent.
        let raw = String::from_utf8_lossy(&zip_entry(&zip, "users.csv")).into_owned();
        assert!(raw.contains(r#""=""=Pat""""#), "{raw}");
        assert!(users.rows[0].1.contains(&"=Pat".to_string()), "{users:?}");
        let enrollments = text("enrollments.csv");
        assert!(enrollments.rows.iter().any(|(_, r)| r[0] == "enr-5" && r[r.len() - 1] == "needed by users.csv line 8"), "{enrollments:?}");

        // Dropped again unfixed: its failed records come back with one Outcome and Message pair,
        // not a second one added to the first.
        let again = kit.run("district-failed-records.zip", &zip).await;
        let again = kit.summary(&again).await;
        let again = kit.svc.store.get(again.failed_rows_key.as_ref().unwrap()).await.unwrap().unwrap();
        let again = archive::read_files(&mut std::io::Cursor::new(&again), "", archive::MAX_ARCHIVE_BYTES).unwrap();
        let users_again = again.iter().find(|e| e.name == "users.csv").and_then(|e| e.table.clone()).unwrap();
        assert_eq!(users_again.headers, users.headers, "the same columns, one Outcome and Message");
        assert!(users_again.rows[0].1.contains(&"=Pat".to_string()), "{users_again:?}");

        // Fixed where the messages say, and dropped again.
        let fixed = {
            let mut zip = zip::ZipArchive::new(std::io::Cursor::new(zip)).unwrap();
            let mut files: Vec<(String, Vec<u8>)> = Vec::new();
            for i in 0..zip.len() {
                let mut f = zip.by_index(i).unwrap();
                let mut text = String::new();
                std::io::Read::read_to_string(&mut f, &mut text).unwrap();
                let text = text.replace("administrator,pnguyen", "guardian,pnguyen").replace("org-s9,student", "org-s2,student");
                files.push((f.name().unwrap().to_string(), text.into_bytes()));
            }
            let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, t)| (n.as_str(), t.as_slice())).collect();
            archive::tests::zip_of(&refs)
        };
        let job = kit.run("district-failed-records.zip", &fixed).await;
        let summary = kit.summary(&job).await;
        assert_eq!((summary.counts.success, summary.counts.failure), (4, 0), "{summary:?}");
        assert_eq!(summary.disabled_not_in_file, 0, "a delta disables nobody");
        let omar = kit.svc.directory.user("acme", "omar.haddad@students.riverbend.example.org").await.unwrap().unwrap();
        assert_eq!(omar.fields.org.as_deref(), Some("Birch Middle"), "its school found by the id the first bundle recorded");
        assert_eq!(omar.fields.associations.get("instructor").map(String::as_str), Some("ken.walsh@riverbend.example.org"));
        assert_eq!(omar.fields.associations.get("parent").map(String::as_str), Some("lee.brooks@home.example.net"));
        let pat = kit.svc.directory.user("acme", "pat.nguyen@home.example.net").await.unwrap().unwrap();
        assert_eq!(pat.fields.first_name.as_deref(), Some("=Pat"), "the round trip changes nothing");
    }
}
