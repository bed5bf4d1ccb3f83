//! OneRoster bundles: a manifest and valid headers, then fuzzed records in each file, zipped, through
//! the same `prepare` ingest runs. No panic; every row of the translated workbook ends as exactly one
//! operation or one outcome; the failed-records bundle cut from any of its rows is itself a bundle
//! that reads again.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shared::ingest::decode::{Table, archive};
use shared::ingest::{oneroster, prepare};
use shared::model::{Mode, Tenant};
use std::io::{Cursor, Write};

const FILES: &[(&str, &str)] = &[
    ("orgs.csv", "sourcedId,status,dateLastModified,name,type,identifier,parentSourcedId\n"),
    ("users.csv", "sourcedId,status,dateLastModified,enabledUser,orgSourcedIds,role,username,userIds,givenName,familyName,middleName,identifier,email,sms,phone,agentSourcedIds,grades,password,primaryOrgSourcedId\n"),
    ("enrollments.csv", "sourcedId,status,dateLastModified,classSourcedId,schoolSourcedId,userSourcedId,role,primary,beginDate,endDate\n"),
    ("classes.csv", "sourcedId,status,dateLastModified,title,grades,courseSourcedId,classCode,classType,location,schoolSourcedId,termSourcedIds,subjects,subjectCodes,periods\n"),
    ("roles.csv", "sourcedId,status,dateLastModified,userSourcedId,roleType,role,beginDate,endDate,orgSourcedId,userProfileSourcedId\n"),
];

fuzz_target!(|data: &[u8]| {
    let (version, kind) = match data.first() {
        Some(b) if b % 2 == 0 => ("1.1", if b % 4 == 0 { "bulk" } else { "delta" }),
        Some(b) => ("1.2", if b % 4 == 1 { "bulk" } else { "delta" }),
        None => return,
    };
    let mut manifest = format!("propertyName,value\nmanifest.version,1.0\noneroster.version,{version}\n");
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let parts: Vec<&[u8]> = data[1..].split(|b| *b == 0xFF).collect();
    for (i, (name, header)) in FILES.iter().enumerate() {
        let body = parts.get(i).copied().unwrap_or_default();
        manifest += &format!("file.{},{kind}\n", name.trim_end_matches(".csv"));
        w.start_file(*name, zip::write::SimpleFileOptions::default()).unwrap();
        w.write_all(header.as_bytes()).unwrap();
        w.write_all(body).unwrap();
    }
    w.start_file("manifest.csv", zip::write::SimpleFileOptions::default()).unwrap();
    w.write_all(manifest.as_bytes()).unwrap();
    let bytes = w.finish().unwrap().into_inner();
    let tenant = Tenant::offline();
    let Ok(p) = prepare(&bytes, &tenant, Mode::Upsert) else { return };
    let rows: usize = p.tables.iter().map(|t| t.rows.len()).sum();
    let mut ids: Vec<u32> = p.ops.iter().map(|o| o.row).chain(p.outcomes.iter().map(|o| o.row)).collect();
    ids.sort_unstable();
    let before = ids.len();
    ids.dedup();
    assert_eq!(before, ids.len(), "a row with two results");
    assert_eq!(ids.len(), rows, "a row without a result");
    // Every row failed: the failed-records bundle reads again as a bundle.
    let failed: Vec<Table> = p
        .tables
        .iter()
        .map(|t| {
            let mut t = t.clone();
            t.headers.push("Message".into());
            for (_, cells) in &mut t.rows {
                cells.resize(t.headers.len() - 1, String::new());
                cells.push("=failed".into());
            }
            t
        })
        .collect();
    let bundle = oneroster::read_zip(&mut Cursor::new(&bytes), archive::MAX_ARCHIVE_BYTES).unwrap().unwrap();
    let again = oneroster::failed_bundle(&bundle, &failed).unwrap();
    if let Err(e) = oneroster::read_zip(&mut Cursor::new(&again), archive::MAX_ARCHIVE_BYTES) {
        // Only a bundle with nothing in users or orgs may come back without them.
        assert!(e.to_string().contains("nothing to apply"), "{e}");
    }
});
