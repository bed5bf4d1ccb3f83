//! OneRoster (1EdTech) CSV bundles, versions 1.1 and 1.2: a zip of CSV files described by
//! `manifest.csv`. A bundle becomes a workbook in the roster vocabulary (`Translated`): one sheet
//! per OneRoster file that holds rows (`orgs.csv`, `users.csv`), each record on the row of its own
//! line, so every message, result row and failed row names the file and line the district sees.
//! What the bundle itself decides about a record (a reference to nothing, a duplicate sourcedId, a
//! record bulk mode leaves out) is a `Verdict` on its row; the rest is validated like any roster.
//! Enrollments, classes and 1.2 roles are not rows: they give each user row its type, organization
//! and Instructor, and the row lists the records it was built from (`OneRosterRecords`).

use super::decode::archive::Entry;
use super::decode::{Format, Table};
use super::sheets::row_id;
use crate::model::{Mode, Status};
use crate::wording::quoted;
use std::collections::{BTreeMap, HashMap, HashSet};

mod failed;
pub use failed::failed_bundle;

/// The files rosterdrop reads; others in a bundle are ignored with a warning.
const READ: &[&str] = &["orgs", "users", "enrollments", "classes", "roles"];
/// Names of OneRoster files, to recognise a bundle that lost its manifest.
const KNOWN: &[&str] = &[
    "orgs",
    "users",
    "enrollments",
    "classes",
    "roles",
    "courses",
    "academicsessions",
    "demographics",
    "userprofiles",
    "lineitems",
    "results",
    "categories",
    "resources",
    "classresources",
    "courseresources",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1_1,
    V1_2,
}

impl Version {
    pub fn label(self) -> &'static str {
        match self {
            Version::V1_1 => "1.1",
            Version::V1_2 => "1.2",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileMode {
    Absent,
    Bulk,
    Delta,
}

/// Where a bundle's files are: `Some("")` at the zip's root, `Some("district/")` when everything
/// is in one folder (zipping a folder does that); `None` when the zip is no bundle.
pub fn bundle_folder(names: &[String]) -> Option<String> {
    if names.iter().any(|n| n.eq_ignore_ascii_case("manifest.csv")) {
        return Some(String::new());
    }
    let (folder, _) = names.iter().filter_map(|n| n.split_once('/')).find(|(_, rest)| rest.eq_ignore_ascii_case("manifest.csv"))?;
    let folder = format!("{folder}/");
    names.iter().all(|n| n.starts_with(&folder)).then_some(folder)
}

/// A zip of OneRoster files without its manifest: said so, rather than "not a roster".
pub fn lost_manifest(names: &[String]) -> Option<String> {
    let base = |n: &str| n.rsplit('/').next().unwrap_or(n).to_ascii_lowercase();
    names.iter().any(|n| KNOWN.iter().any(|k| base(n) == format!("{k}.csv"))).then(|| {
        "the zip file has OneRoster files but no manifest.csv; a OneRoster bundle needs one at its top level (it names the version, 1.1 or 1.2, and which files are bulk, delta or absent). Export the bundle again from your student information system".to_string()
    })
}

/// Why a zip of files was not read as a bundle.
#[derive(Debug, Clone, PartialEq)]
pub enum NotRead {
    /// No manifest: not a bundle at all (said so, in the user's terms).
    NoBundle(String),
    /// A bundle refused as a whole (its manifest, its entries, a column it lacks).
    Refused(String),
}

impl std::fmt::Display for NotRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotRead::NoBundle(m) | NotRead::Refused(m) => f.write_str(m),
        }
    }
}

/// The bundle a zip holds, its files unzipping to at most `limit` bytes: `Ok(None)` when the bytes
/// are no zip of files (a workbook, or no zip at all: the table reader's to read).
pub fn read_zip<R: std::io::Read + std::io::Seek>(r: &mut R, limit: u64) -> Result<Option<Bundle>, NotRead> {
    use super::decode::archive::{ZipKind, read_files, zip_kind};
    let names = match zip_kind(r) {
        Ok(ZipKind::Files(names)) => names,
        _ => return Ok(None),
    };
    let Some(folder) = bundle_folder(&names) else {
        let why = lost_manifest(&names).unwrap_or_else(|| format!("the zip file {}", super::decode::NOT_A_WORKBOOK));
        return Err(NotRead::NoBundle(why));
    };
    let entries = read_files(r, &folder, limit).map_err(|e| NotRead::Refused(e.to_string()))?;
    Bundle::read(entries).map(Some).map_err(NotRead::Refused)
}

/// A record's column values by header name (OneRoster headers are case-sensitive; read here
/// without case, since nothing else could be meant).
struct File {
    name: &'static str,
    table: Table,
    cols: HashMap<String, usize>,
}

impl File {
    fn new(name: &'static str, mut table: Table) -> Self {
        let cols: HashMap<String, usize> = table.headers.iter().enumerate().map(|(i, h)| (h.trim().to_ascii_lowercase(), i)).collect();
        // A file of our failed-records bundle (its Outcome and Message columns): the apostrophe
        // that kept a spreadsheet from running a value is taken off, so the loop changes nothing.
        if cols.contains_key("outcome") && cols.contains_key("message") {
            for (_, cells) in &mut table.rows {
                for c in cells.iter_mut() {
                    let plain = crate::finalize::write::unneutralise(c);
                    if plain.len() != c.len() {
                        *c = plain.to_string();
                    }
                }
            }
        }
        File { name, table, cols }
    }
    fn has(&self, col: &str) -> bool {
        self.cols.contains_key(&col.to_ascii_lowercase())
    }
    fn get<'a>(&self, cells: &'a [String], col: &str) -> &'a str {
        self.cols.get(&col.to_ascii_lowercase()).and_then(|i| cells.get(*i)).map(|c| c.trim()).unwrap_or("")
    }
    fn records(&self) -> impl Iterator<Item = (u32, &[String])> {
        self.table.rows.iter().filter(|(_, c)| c.iter().any(|v| !v.trim().is_empty())).map(|(n, c)| (*n, c.as_slice()))
    }
    fn require(&self, cols: &[&str]) -> Result<(), String> {
        match cols.iter().find(|c| !self.has(c)) {
            Some(c) => Err(format!(
                "{}.csv has no {c} column; its header row has: {}",
                self.name,
                super::headers::header_list(&self.table.headers)
            )),
            None => Ok(()),
        }
    }
}

/// A bundle read and checked as a whole: what a bundle-level problem refuses (nothing applied).
pub struct Bundle {
    pub version: Version,
    modes: BTreeMap<&'static str, FileMode>,
    files: HashMap<&'static str, File>,
    pub warnings: Vec<String>,
}

fn split_list(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|v| !v.is_empty())
}

impl Bundle {
    /// The bundle's files (below its folder), read as `archive::read_files` gave them.
    pub fn read(entries: Vec<Entry>) -> Result<Bundle, String> {
        let mut by_name: HashMap<String, Option<Table>> = HashMap::new();
        for e in entries {
            if by_name.insert(e.name.to_ascii_lowercase(), e.table).is_some() {
                return Err(format!("the bundle has two files named {} (names are compared without case)", quoted(&e.name)));
            }
        }
        let manifest = by_name.remove("manifest.csv").flatten().ok_or("the bundle's manifest.csv is empty")?;
        let cols: Vec<String> = manifest.headers.iter().map(|h| h.trim().to_ascii_lowercase()).collect();
        let (Some(p), Some(v)) = (cols.iter().position(|c| c == "propertyname"), cols.iter().position(|c| c == "value")) else {
            return Err(format!(
                "manifest.csv needs the columns propertyName and value; its header row has: {}",
                super::headers::header_list(&manifest.headers)
            ));
        };
        let mut props = HashMap::new();
        for (_, cells) in &manifest.rows {
            let get = |i: usize| cells.get(i).map(|c| c.trim()).unwrap_or("");
            if !get(p).is_empty() {
                props.insert(get(p).to_ascii_lowercase(), get(v).to_string());
            }
        }
        let version = match props.get("oneroster.version").map(String::as_str) {
            Some("1.1") => Version::V1_1,
            Some(v) if v == "1.2" || v.starts_with("1.2.") => Version::V1_2,
            Some(other) => {
                return Err(format!(
                    "manifest.csv says oneroster.version \"{}\"; rosterdrop reads OneRoster 1.1 and 1.2 bundles",
                    quoted(other)
                ));
            }
            None => return Err("manifest.csv has no oneroster.version; it must say 1.1 or 1.2".into()),
        };
        match props.get("manifest.version").map(String::as_str) {
            Some("1.0") | None => {}
            Some(other) => return Err(format!("manifest.csv says manifest.version \"{}\"; rosterdrop reads version 1.0", quoted(other))),
        }
        let mut modes = BTreeMap::new();
        let mut files = HashMap::new();
        let mut ignored = Vec::new();
        for (prop, value) in &props {
            let Some(file) = prop.strip_prefix("file.") else { continue };
            let mode = match value.trim().to_ascii_lowercase().as_str() {
                "absent" | "" => FileMode::Absent,
                "bulk" => FileMode::Bulk,
                "delta" => FileMode::Delta,
                other => {
                    return Err(format!("manifest.csv says file.{file} is \"{}\"; it must be absent, bulk or delta", quoted(other)));
                }
            };
            let entry = format!("{file}.csv");
            if mode == FileMode::Absent {
                by_name.remove(&entry);
                continue;
            }
            let Some(table) = by_name.remove(&entry) else {
                return Err(format!("manifest.csv says {entry} is {value}, but the bundle has no {entry}; add it, or mark it absent"));
            };
            let Some(table) = table else { return Err(format!("{entry} is empty; a OneRoster file has at least its header row")) };
            match READ.iter().find(|r| **r == file) {
                Some(name) if !(*name == "roles" && version == Version::V1_1) => {
                    modes.insert(*name, mode);
                    files.insert(*name, File::new(name, table));
                }
                _ => ignored.push(entry),
            }
        }
        let mut warnings = Vec::new();
        let mut unlisted: Vec<String> = by_name.into_keys().collect();
        unlisted.sort();
        if !unlisted.is_empty() {
            warnings.push(format!("{} not listed in manifest.csv, so not read", unlisted.join(", ")));
        }
        if !ignored.is_empty() {
            ignored.sort();
            warnings.push(format!("{} ignored: rosterdrop provisions users and organizations", ignored.join(", ")));
        }
        if !files.contains_key("users") && !files.contains_key("orgs") {
            return Err("manifest.csv marks both users and orgs absent, so the bundle has nothing to apply".into());
        }
        let need: &[(&str, &[&str])] = &[
            ("orgs", &["sourcedId", "name"]),
            ("users", &["sourcedId"]),
            ("enrollments", &["classSourcedId", "userSourcedId", "role"]),
            ("classes", &["sourcedId"]),
            ("roles", &["userSourcedId", "role"]),
        ];
        for (name, cols) in need {
            if let Some(f) = files.get(name) {
                f.require(cols)?;
            }
        }
        if let Some(users) = files.get("users")
            && version == Version::V1_1
        {
            users.require(&["role"])?;
        }
        Ok(Bundle { version, modes, files, warnings })
    }

    fn mode_of(&self, file: &str) -> FileMode {
        self.modes.get(file).copied().unwrap_or(FileMode::Absent)
    }

    /// A bulk bundle is the whole list (replace mode); a delta bundle the changes only.
    pub fn is_bulk(&self) -> bool {
        match self.mode_of("users") {
            FileMode::Absent => self.mode_of("orgs") == FileMode::Bulk,
            m => m == FileMode::Bulk,
        }
    }

    /// The mode a bundle is applied in: the manifest's, unless the folder asks for a dry run,
    /// `replace-force` (a bulk bundle never held) or `upsert` (a bulk bundle applied as changes,
    /// nobody disabled). Other folders contradict the manifest.
    pub fn mode(&self, folder: Option<Mode>) -> Result<Mode, String> {
        let bulk = self.is_bulk();
        match (folder, bulk) {
            (None, true) => Ok(Mode::Replace),
            (None | Some(Mode::Upsert), _) => Ok(Mode::Upsert),
            (Some(Mode::Validate), _) => Ok(Mode::Validate),
            (Some(m @ (Mode::Replace | Mode::ReplaceForce)), true) => Ok(m),
            (Some(m @ (Mode::Replace | Mode::ReplaceForce)), false) => Err(format!(
                "the bundle's manifest says delta (changes only), but it was dropped in the {} folder, which takes the whole list; drop it in the tenant's folder, or export a bulk bundle",
                m.as_str()
            )),
            (Some(m), _) => Err(format!(
                "a OneRoster bundle says in manifest.csv whether it is the whole list (bulk) or changes (delta), so it cannot go in the {} folder; drop it in the tenant's folder, or in validate/ for a dry run",
                m.as_str()
            )),
        }
    }

    /// Organizations the bundle references by sourcedId without defining them (a delta bundle's
    /// users of schools it does not change): asked of the directory before `translate`.
    pub fn outside_orgs(&self) -> Vec<String> {
        let mut defined = HashSet::new();
        let mut refs: Vec<String> = Vec::new();
        if let Some(orgs) = self.files.get("orgs") {
            defined.extend(orgs.records().map(|(_, r)| orgs.get(r, "sourcedId").to_string()));
            refs.extend(orgs.records().map(|(_, r)| orgs.get(r, "parentSourcedId").to_string()));
        }
        let mut nameless = Vec::new();
        if let Some(orgs) = self.files.get("orgs") {
            // Deletions by sourcedId alone: their names are in the directory.
            nameless
                .extend(orgs.records().filter(|(_, r)| orgs.get(r, "name").is_empty()).map(|(_, r)| orgs.get(r, "sourcedId").to_string()));
        }
        if let Some(users) = self.files.get("users") {
            for (_, r) in users.records() {
                refs.push(users.get(r, "primaryOrgSourcedId").to_string());
                refs.extend(split_list(users.get(r, "orgSourcedIds")).map(str::to_string));
            }
        }
        if let Some(roles) = self.files.get("roles") {
            refs.extend(roles.records().map(|(_, r)| roles.get(r, "orgSourcedId").to_string()));
        }
        let mut out: Vec<String> = refs.into_iter().filter(|r| !r.is_empty() && !defined.contains(r)).collect();
        out.extend(nameless.into_iter().filter(|id| !id.is_empty()));
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Users the bundle references by sourcedId without defining them (guardians, teachers,
    /// deleted users without email): asked of the directory's ExternalIds before `translate`.
    pub fn outside_users(&self) -> Vec<String> {
        let mut defined = HashSet::new();
        let mut refs = Vec::new();
        if let Some(users) = self.files.get("users") {
            for (_, r) in users.records() {
                defined.insert(users.get(r, "sourcedId").to_string());
            }
            for (_, r) in users.records() {
                refs.extend(split_list(users.get(r, "agentSourcedIds")).map(str::to_string));
            }
        }
        if let Some(e) = self.files.get("enrollments") {
            refs.extend(e.records().map(|(_, r)| e.get(r, "userSourcedId").to_string()));
        }
        let mut out: Vec<String> = refs.into_iter().filter(|r| !r.is_empty() && !defined.contains(r)).collect();
        // A delta record deleting or disabling someone may carry the sourcedId alone.
        if let Some(users) = self.files.get("users") {
            out.extend(
                users
                    .records()
                    .filter(|(_, r)| users.get(r, "email").is_empty())
                    .map(|(_, r)| users.get(r, "sourcedId").to_string())
                    .filter(|id| !id.is_empty()),
            );
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// What the bundle decides about a record before validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub status: Status,
    pub column: Option<String>,
    pub message: String,
    /// `Change::Read` for a record read into the rows it names.
    pub change: Option<crate::model::Change>,
}

fn fail(verdict: &mut Option<Verdict>, column: &str, message: String) {
    verdict.get_or_insert(Verdict::fail(column, message));
}

impl Verdict {
    fn fail(column: &str, message: String) -> Self {
        Verdict { status: Status::Failure, column: Some(column.into()), message, change: None }
    }
    fn skip(message: String) -> Self {
        Verdict { status: Status::Skipped, column: None, message, change: None }
    }
    fn read(message: String) -> Self {
        Verdict { status: Status::Success, column: None, message, change: Some(crate::model::Change::Read) }
    }
}

/// A bundle in the roster vocabulary: the sheets of the workbook ingest reads instead.
pub struct Translated {
    /// `orgs.csv` then `users.csv` (those the manifest lists), each a roster table whose rows
    /// sit at their record's line.
    pub tables: Vec<Table>,
    pub verdicts: HashMap<u32, Verdict>,
    pub warnings: Vec<String>,
    /// The sheets of records read into other rows (`roles.csv`, `classes.csv`, `enrollments.csv`):
    /// every row has its verdict, and their headers are not roster columns.
    pub context: HashSet<String>,
}

/// The column listing the OneRoster records a row was built from.
pub const RECORDS: &str = "OneRosterRecords";

/// "users.csv line 5", "enrollments.csv lines 2, 6": every line (the failed-records bundle is
/// cut by them), or the first `limit` in a warning.
fn lines_upto(file: &str, mut ns: Vec<u32>, limit: usize) -> String {
    ns.sort_unstable();
    let shown: Vec<String> = ns.iter().take(limit).map(u32::to_string).collect();
    let more = if ns.len() > limit { format!(" and {} more", ns.len() - limit) } else { String::new() };
    format!("{file}.csv {} {}{more}", if ns.len() == 1 { "line" } else { "lines" }, shown.join(", "))
}

fn lines(file: &str, ns: Vec<u32>) -> String {
    lines_upto(file, ns, usize::MAX)
}

/// The (file, line) pairs a `RECORDS` cell names: what `lines` wrote.
pub fn records_of(cell: &str) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for part in cell.split(';') {
        let Some((file, rest)) = part.trim().split_once(' ') else { continue };
        let rest = rest.trim_start_matches("lines").trim_start_matches("line");
        out.extend(rest.split(',').filter_map(|n| n.trim().parse().ok()).map(|n| (file.trim_end_matches(".csv").to_string(), n)));
    }
    out
}

/// A OneRoster role to a user type; admin roles are refused as admin roles are in any roster.
fn user_type(role: &str) -> Result<&'static str, String> {
    match role.to_ascii_lowercase().as_str() {
        "student" => Ok("Student"),
        "teacher" => Ok("Instructor"),
        "parent" | "guardian" | "relative" => Ok("Parent"),
        "aide" | "proctor" | "counselor" => Ok("Staff"),
        "administrator" | "districtadministrator" | "siteadministrator" | "systemadministrator" | "principal" => Err(format!(
            "role \"{}\" is an administrator role, and admin roles are not assigned by bulk upload; ask an administrator to grant it",
            quoted(role)
        )),
        "" => Err("the user has no role (OneRoster 1.1: the role column; 1.2: a roles.csv record)".into()),
        other => Err(format!(
            "role \"{}\" is not one rosterdrop provisions (student, teacher, parent, guardian, relative, aide, proctor, counselor)",
            quoted(other)
        )),
    }
}

fn is_parent_role(role: &str) -> bool {
    matches!(role.to_ascii_lowercase().as_str(), "parent" | "guardian" | "relative")
}

struct UserRec<'a> {
    line: u32,
    cells: &'a [String],
}

impl Bundle {
    /// The bundle in the roster vocabulary. `known` maps the sourcedIds of `outside_users` the
    /// directory holds to their users' emails; `external_id` is the tenant's ExternalId header.
    pub fn translate(&self, known: &HashMap<String, String>, known_orgs: &HashMap<String, String>, external_id: &str) -> Translated {
        let mut tables = Vec::new();
        let mut verdicts = HashMap::new();
        let mut warnings = self.warnings.clone();
        let delta = !self.is_bulk();
        let status_of = |f: &File, r: &[String]| f.get(r, "status").to_ascii_lowercase();

        // Organizations, by sourcedId.
        let mut org_names: HashMap<&str, &str> = HashMap::new();
        if let Some(orgs) = self.files.get("orgs") {
            let index = tables.len() as u32;
            let mut rows = Vec::new();
            let mut first: HashMap<&str, u32> = HashMap::new();
            let mut names: HashMap<&str, &str> = HashMap::new();
            for (_, r) in orgs.records() {
                names.entry(orgs.get(r, "sourcedId")).or_insert(orgs.get(r, "name"));
            }
            for (n, r) in orgs.records() {
                let id = orgs.get(r, "sourcedId");
                let status = status_of(orgs, r);
                let action = if status == "tobedeleted" { "Delete" } else { "Upsert" };
                // A delta record deleting an organization may carry its sourcedId alone.
                let name = match orgs.get(r, "name") {
                    "" if action == "Delete" => known_orgs.get(id).map_or("", String::as_str),
                    name => name,
                };
                let parent_id = orgs.get(r, "parentSourcedId");
                let parent = names.get(parent_id).map(|p| p.to_string()).or_else(|| known_orgs.get(parent_id).cloned());
                let unknown_parent = !parent_id.is_empty() && parent.is_none() && action != "Delete";
                let parent = if action == "Delete" { String::new() } else { parent.unwrap_or_default() };
                rows.push((n, vec!["Org".into(), action.into(), name.into(), id.into(), parent, lines("orgs", vec![n])]));
                let verdict = if id.is_empty() {
                    Some(Verdict::fail("sourcedId", format!("orgs.csv line {n} has no sourcedId")))
                } else if let Some(earlier) = first.get(id) {
                    Some(Verdict::fail(
                        "sourcedId",
                        format!("duplicate sourcedId \"{}\": orgs.csv line {earlier} already has it", quoted(id)),
                    ))
                } else if !matches!(status.as_str(), "" | "active" | "tobedeleted") {
                    Some(Verdict::fail("status", format!("status \"{}\" is not active or tobedeleted", quoted(&status))))
                } else if status == "tobedeleted" && !delta {
                    Some(Verdict::skip(
                        "status tobedeleted in a bulk bundle: not applied (organizations are deleted by a delta bundle)".into(),
                    ))
                } else if name.is_empty() && action == "Delete" {
                    Some(Verdict::fail(
                        "sourcedId",
                        format!(
                            "the record deletes \"{}\" without its name, and no organization of this tenant has that sourcedId",
                            quoted(id)
                        ),
                    ))
                } else if name.is_empty() {
                    Some(Verdict::fail("name", format!("orgs.csv line {n} has no name; rosterdrop knows organizations by name")))
                } else if unknown_parent {
                    Some(Verdict::fail(
                        "parentSourcedId",
                        format!(
                            "parentSourcedId names \"{}\", which is in no file of this bundle and not in the directory",
                            quoted(parent_id)
                        ),
                    ))
                } else {
                    None
                };
                first.entry(id).or_insert(n);
                match verdict {
                    Some(v) => {
                        verdicts.insert(row_id(index, n), v);
                    }
                    None => {
                        org_names.insert(id, name);
                    }
                }
            }
            tables.push(sheet("orgs", orgs, index, vec!["Type", "Action", "OrgName", external_id, "ParentOrg", RECORDS], rows));
        }

        let Some(users) = self.files.get("users") else {
            return Translated { tables, verdicts, warnings, context: HashSet::new() };
        };
        let index = tables.len() as u32;
        let mut by_id: HashMap<&str, UserRec> = HashMap::new();
        let mut dup_of: HashMap<u32, u32> = HashMap::new();
        for (n, r) in users.records() {
            let id = users.get(r, "sourcedId");
            match by_id.get(id) {
                Some(first) => {
                    dup_of.insert(n, first.line);
                }
                None => {
                    by_id.insert(id, UserRec { line: n, cells: r });
                }
            }
        }
        // 1.2: roles by user, primary first.
        let mut roles: HashMap<&str, Vec<(u32, &str, &str, bool)>> = HashMap::new();
        if let Some(f) = self.files.get("roles") {
            for (n, r) in f.records() {
                if status_of(f, r) == "tobedeleted" {
                    continue;
                }
                let primary = f.get(r, "roleType").eq_ignore_ascii_case("primary");
                roles.entry(f.get(r, "userSourcedId")).or_default().push((n, f.get(r, "role"), f.get(r, "orgSourcedId"), primary));
            }
            for list in roles.values_mut() {
                list.sort_by_key(|(n, _, _, primary)| (!primary, *n));
            }
        }
        let role_of = |id: &str, r: &[String]| -> (String, Vec<u32>) {
            let own = users.get(r, "role");
            if !own.is_empty() {
                return (own.to_string(), vec![]);
            }
            match roles.get(id) {
                Some(list) => (list[0].1.to_string(), list.iter().map(|x| x.0).collect()),
                None => (String::new(), vec![]),
            }
        };
        // A referenced user's email: from the bundle, or the directory.
        let email_of = |id: &str| -> Option<Result<String, String>> {
            if let Some(u) = by_id.get(id) {
                let e = users.get(u.cells, "email");
                return Some(if e.is_empty() { Err(format!("users.csv line {} has no email", u.line)) } else { Ok(e.to_lowercase()) });
            }
            known.get(id).map(|e| Ok(e.clone()))
        };
        let classes: Option<HashSet<&str>> = self.files.get("classes").map(|c| c.records().map(|(_, r)| c.get(r, "sourcedId")).collect());
        // Enrollments: each student's classes, each class's teachers (primary first).
        let mut student_classes: HashMap<&str, Vec<(u32, &str)>> = HashMap::new();
        let mut class_teachers: HashMap<&str, Vec<(bool, u32, &str)>> = HashMap::new();
        let mut stray = Vec::new();
        let mut unknown_teachers = Vec::new();
        if let Some(e) = self.files.get("enrollments") {
            for (n, r) in e.records() {
                if status_of(e, r) == "tobedeleted" {
                    continue;
                }
                let (user, class) = (e.get(r, "userSourcedId"), e.get(r, "classSourcedId"));
                match e.get(r, "role").to_ascii_lowercase().as_str() {
                    "student" if by_id.contains_key(user) => student_classes.entry(user).or_default().push((n, class)),
                    "student" => stray.push(n),
                    "teacher" => {
                        if by_id.contains_key(user) || known.contains_key(user) {
                            class_teachers.entry(class).or_default().push((e.get(r, "primary").eq_ignore_ascii_case("true"), n, user));
                        } else {
                            unknown_teachers.push(n);
                        }
                    }
                    _ => {}
                }
            }
            for list in class_teachers.values_mut() {
                list.sort_by_key(|(primary, n, _)| (!primary, *n));
            }
        }
        if !stray.is_empty() {
            warnings.push(format!(
                "{}: students not in users.csv, so those enrollments were not applied (rosterdrop applies a student's enrollments with the student's users.csv record)",
                lines_upto("enrollments", stray, 10)
            ));
        }
        if !unknown_teachers.is_empty() {
            warnings.push(format!(
                "{}: teachers in no file of the bundle and not in the directory, so those enrollments give no Instructor",
                lines_upto("enrollments", unknown_teachers, 10)
            ));
        }
        let (mut several_orgs, mut several_teachers) = (0u32, 0u32);
        let mut rows = Vec::new();
        for (n, r) in users.records() {
            let id = users.get(r, "sourcedId");
            let status = status_of(users, r);
            let enabled = users.get(r, "enabledUser").to_ascii_lowercase();
            let mut email = users.get(r, "email").to_string();
            let username = users.get(r, "username");
            let (role, role_lines) = role_of(id, r);
            let mut records = vec![lines("users", vec![n])];
            if !role_lines.is_empty() {
                records.push(lines("roles", role_lines));
            }
            let mut verdict = None;
            if id.is_empty() {
                fail(&mut verdict, "sourcedId", format!("users.csv line {n} has no sourcedId"));
            }
            if let Some(first) = dup_of.get(&n) {
                fail(&mut verdict, "sourcedId", format!("duplicate sourcedId \"{}\": users.csv line {first} already has it", quoted(id)));
            }
            if !matches!(status.as_str(), "" | "active" | "tobedeleted") {
                fail(&mut verdict, "status", format!("status \"{}\" is not active or tobedeleted", quoted(&status)));
            }
            if !matches!(enabled.as_str(), "" | "true" | "false") {
                fail(&mut verdict, "enabledUser", format!("enabledUser \"{}\" must be true or false", quoted(&enabled)));
            }
            let deleted = status == "tobedeleted";
            let action = match (delta, deleted, enabled == "false") {
                (true, true, _) => "Delete",
                (true, false, true) => "Disable",
                _ => "Upsert",
            };
            if !delta && verdict.is_none() && (deleted || enabled == "false") {
                let why = if deleted { "status tobedeleted" } else { "enabledUser is false" };
                verdict = Some(Verdict::skip(format!("{why} in a bulk bundle: left out of the list, so the user is disabled if active")));
            }
            let mut username = username.to_string();
            if email.is_empty()
                && (deleted || enabled == "false")
                && let Some(e) = known.get(id)
            {
                // A delta record deleting someone may carry the sourcedId alone; a student known
                // by username is keyed `user:<username>`.
                match e.strip_prefix("user:") {
                    Some(u) => username = u.to_string(),
                    None => email = e.clone(),
                }
            }
            if action != "Upsert" && email.is_empty() && username.is_empty() {
                fail(
                    &mut verdict,
                    "sourcedId",
                    format!(
                        "the record {} \"{}\" without its email, and no user of this tenant has that sourcedId; nothing to {}",
                        if action == "Delete" { "deletes" } else { "disables" },
                        quoted(id),
                        action.to_lowercase()
                    ),
                );
            }
            let (mut kind, mut org, mut parent, mut instructor) = (String::new(), String::new(), String::new(), String::new());
            if action == "Upsert" {
                match user_type(&role) {
                    Ok(t) => kind = t.to_string(),
                    Err(m) => fail(&mut verdict, "role", m),
                }
                // The organization: 1.2's primary org, then the primary role's, then the list.
                let mut org_ids: Vec<&str> = Vec::new();
                org_ids.extend(Some(users.get(r, "primaryOrgSourcedId")).filter(|s| !s.is_empty()));
                if let Some(list) = roles.get(id) {
                    org_ids.extend(list.iter().map(|x| x.2).filter(|s| !s.is_empty()));
                }
                org_ids.extend(split_list(users.get(r, "orgSourcedIds")));
                let mut seen = HashSet::new();
                org_ids.retain(|o| seen.insert(*o));
                several_orgs += u32::from(org_ids.len() > 1);
                if let Some(first) = org_ids.first() {
                    match org_names.get(first).map(|n| n.to_string()).or_else(|| known_orgs.get(*first).cloned()) {
                        Some(name) => org = name,
                        None => fail(
                            &mut verdict,
                            "orgSourcedIds",
                            format!(
                                "the user's organization \"{}\" is in no file of this bundle (or its orgs.csv record failed) and not in the directory",
                                quoted(first)
                            ),
                        ),
                    }
                }
                if kind == "Student" {
                    // Guardians: the first with an email.
                    let mut reasons = Vec::new();
                    for agent in split_list(users.get(r, "agentSourcedIds")) {
                        match email_of(agent) {
                            None => fail(
                                &mut verdict,
                                "agentSourcedIds",
                                format!(
                                    "agentSourcedIds names \"{}\", which is in no file of this bundle and not in the directory",
                                    quoted(agent)
                                ),
                            ),
                            Some(Ok(e)) if parent.is_empty() => match by_id.get(agent) {
                                None => parent = e,
                                Some(a) => {
                                    let role = role_of(agent, a.cells).0;
                                    if is_parent_role(&role) {
                                        parent = e;
                                    } else if let Err(why) = user_type(&role) {
                                        // The guardian's own record fails: so does the student, rather
                                        // than being created without the guardian it names.
                                        fail(
                                            &mut verdict,
                                            "agentSourcedIds",
                                            format!(
                                                "guardian \"{}\" (users.csv line {}) cannot be created ({why}); fix that record",
                                                quoted(agent),
                                                a.line
                                            ),
                                        );
                                    }
                                }
                            },
                            Some(Err(why)) => reasons.push(why),
                            Some(Ok(_)) => {}
                        }
                    }
                    if email.is_empty() && parent.is_empty() {
                        let why = if reasons.is_empty() { String::new() } else { format!(" ({})", reasons.join("; ")) };
                        fail(
                            &mut verdict,
                            "agentSourcedIds",
                            format!(
                                "a student without email needs a guardian with one: add the guardian's sourcedId to agentSourcedIds{why}"
                            ),
                        );
                    }
                    // Instructor: the first teacher, primary first, of the student's classes in order.
                    let mut teachers: Vec<&str> = Vec::new();
                    let mut used = Vec::new();
                    for (line, class) in student_classes.get(id).map(Vec::as_slice).unwrap_or_default() {
                        used.push(*line);
                        if classes.as_ref().is_some_and(|c| !c.contains(class)) {
                            fail(
                                &mut verdict,
                                "enrollments",
                                format!("enrollments.csv line {line}: classSourcedId \"{}\" is not in classes.csv", quoted(class)),
                            );
                        }
                        for (_, tline, teacher) in class_teachers.get(class).map(Vec::as_slice).unwrap_or_default() {
                            used.push(*tline);
                            if !teachers.contains(teacher) {
                                teachers.push(teacher);
                            }
                        }
                    }
                    several_teachers += u32::from(teachers.len() > 1);
                    instructor = teachers.iter().find_map(|t| email_of(t).and_then(Result::ok)).unwrap_or_default();
                    if !used.is_empty() {
                        used.sort_unstable();
                        used.dedup();
                        records.push(lines("enrollments", used));
                    }
                }
            }
            let ext = id.to_string();
            let row = vec![
                kind,
                action.to_string(),
                email,
                username,
                ext,
                users.get(r, "givenName").to_string(),
                users.get(r, "familyName").to_string(),
                Some(users.get(r, "phone")).filter(|p| !p.is_empty()).unwrap_or(users.get(r, "sms")).to_string(),
                org,
                parent,
                instructor,
                records.join("; "),
            ];
            if let Some(v) = verdict {
                verdicts.insert(row_id(index, n), v);
            }
            rows.push((n, row));
        }
        if several_orgs > 0 {
            let who = if several_orgs == 1 { "1 user belongs".to_string() } else { format!("{several_orgs} users belong") };
            warnings.push(format!(
                "{who} to several organizations; each was given the first (1.2: the primary org), as a rosterdrop user has one"
            ));
        }
        if several_teachers > 0 {
            let who = if several_teachers == 1 { "1 student has".to_string() } else { format!("{several_teachers} students have") };
            warnings.push(format!(
                "{who} several teachers; each got the first primary teacher of their first class as Instructor, as a rosterdrop user has one"
            ));
        }
        let headers = vec![
            "Type",
            "Action",
            "Email",
            "Username",
            external_id,
            "FirstName",
            "LastName",
            "Phone",
            "OrgName",
            "Parent",
            "Instructor",
            RECORDS,
        ];
        tables.push(sheet("users", users, index, headers, rows));

        // Records read into other rows: each on its own row, saying what it was read into.
        let mut context = HashSet::new();
        let line_of = |id: &str| by_id.get(id).map(|u| u.line);
        let mut add = |tables: &mut Vec<Table>, name: &'static str, file: &File, decide: &dyn Fn(u32, &[String]) -> Verdict| {
            let index = tables.len() as u32;
            let mut rows = Vec::new();
            for (n, r) in file.records() {
                verdicts.insert(row_id(index, n), decide(n, r));
                rows.push((n, vec![lines(name, vec![n])]));
            }
            context.insert(format!("{name}.csv"));
            tables.push(sheet(name, file, index, vec![RECORDS], rows));
        };
        if let Some(f) = self.files.get("roles") {
            add(&mut tables, "roles", f, &|_, r| {
                let user = f.get(r, "userSourcedId");
                match line_of(user) {
                    _ if status_of(f, r) == "tobedeleted" => Verdict::skip("status tobedeleted: not read".into()),
                    Some(line) => Verdict::read(format!("role \"{}\" of users.csv line {line}", quoted(f.get(r, "role")))),
                    None => Verdict::skip(format!("user \"{}\" is not in users.csv: not read", quoted(user))),
                }
            });
        }
        if let Some(f) = self.files.get("classes") {
            let mut named: HashMap<&str, Vec<u32>> = HashMap::new();
            if let Some(e) = self.files.get("enrollments") {
                for (n, r) in e.records() {
                    named.entry(e.get(r, "classSourcedId")).or_default().push(n);
                }
            }
            add(&mut tables, "classes", f, &|_, r| match named.get(f.get(r, "sourcedId")) {
                Some(ns) => Verdict::read(format!("read with {}", lines("enrollments", ns.clone()))),
                None => Verdict::skip("no enrollment names this class: not read".into()),
            });
        }
        if let Some(f) = self.files.get("enrollments") {
            add(&mut tables, "enrollments", f, &|_, r| {
                let (user, class, role) = (f.get(r, "userSourcedId"), f.get(r, "classSourcedId"), f.get(r, "role").to_ascii_lowercase());
                let (user, class) = (quoted(user), quoted(class));
                match role.as_str() {
                    _ if status_of(f, r) == "tobedeleted" => {
                        Verdict::skip("status tobedeleted: not read (an Instructor given stays until a record gives another)".into())
                    }
                    "student" => match line_of(f.get(r, "userSourcedId")) {
                        Some(line) => Verdict::read(format!("student \"{user}\" in class \"{class}\": read with users.csv line {line}")),
                        None => Verdict::skip(format!("student \"{user}\" is not in users.csv, so this enrollment was not applied")),
                    },
                    "teacher" if line_of(f.get(r, "userSourcedId")).is_some() || known.contains_key(f.get(r, "userSourcedId")) => {
                        Verdict::read(format!("teacher \"{user}\" of class \"{class}\": read as its students' Instructor"))
                    }
                    "teacher" => Verdict::skip(format!(
                        "teacher \"{user}\" is in no file of this bundle and not in the directory, so this enrollment gives no Instructor"
                    )),
                    other => {
                        Verdict::skip(format!("role \"{}\": not read (rosterdrop reads student and teacher enrollments)", quoted(other)))
                    }
                }
            });
        }
        Translated { tables, verdicts, warnings, context }
    }
}

fn sheet(name: &str, file: &File, index: u32, headers: Vec<&str>, rows: Vec<(u32, Vec<String>)>) -> Table {
    Table {
        format: Format::Xlsx,
        encoding: None,
        delimiter: None,
        sheet: Some(format!("{name}.csv")),
        header_row: file.table.header_row,
        index,
        headers: headers.into_iter().map(str::to_string).collect(),
        rows,
    }
}

impl Translated {
    /// The workbook ingest and finalize read: each record on its line's row, so "row 7 of sheet
    /// users.csv" is line 7 of users.csv.
    pub fn to_xlsx(&self) -> Result<Vec<u8>, String> {
        let mut wb = rust_xlsxwriter::Workbook::new();
        for t in &self.tables {
            let err = |e: rust_xlsxwriter::XlsxError| e.to_string();
            // Rows go to a temporary file as they are written (rows come in order): the writer
            // holds no cell, so the workbook costs nothing beside the tables it is made from.
            let ws = wb.add_worksheet_with_constant_memory().map_err(err)?;
            ws.set_name(t.sheet.as_deref().unwrap_or("Sheet")).map_err(err)?;
            let at = t.header_row.saturating_sub(1);
            for (c, h) in t.headers.iter().enumerate() {
                ws.write_string(at, c as u16, h).map_err(err)?;
            }
            if let Some((last, _)) = t.rows.last().filter(|(n, _)| *n > crate::ingest::decode::MAX_SHEET_ROWS) {
                let name = t.sheet.as_deref().unwrap_or_default();
                return Err(format!("{name} has a record on line {last}, more than a sheet can hold; split the bundle"));
            }
            for (n, cells) in &t.rows {
                for (c, v) in cells.iter().enumerate().filter(|(_, v)| !v.is_empty()) {
                    // Cells are cut where a spreadsheet cell ends; validation refuses far less.
                    let v: String = v.chars().take(32_000).collect();
                    ws.write_string(n.saturating_sub(1), c as u16, v).map_err(err)?;
                }
            }
        }
        wb.save_to_buffer().map_err(|e| e.to_string())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ingest::decode::archive::tests::zip_of;
    use crate::ingest::prepare;
    use crate::model::{Action, RowOp, Target, Tenant};

    /// A fixture bundle's files (`tests/fixtures/oneroster/<name>/`), with `change` applied to
    /// (file name, text) pairs, zipped.
    pub fn bundle(name: &str, change: impl Fn(&mut Vec<(String, String)>)) -> Vec<u8> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/oneroster").join(name);
        let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(&p).unwrap()))
            .collect();
        files.sort();
        change(&mut files);
        let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, t)| (n.as_str(), t.as_bytes())).collect();
        zip_of(&refs)
    }

    /// A bundle's files as (name, text), for a test to change.
    pub type Files = Vec<(String, String)>;
    type Change = Box<dyn Fn(&mut Files)>;

    /// The bundle a zip holds, read as ingest reads it.
    fn read(zip: Vec<u8>) -> Bundle {
        read_zip(&mut std::io::Cursor::new(zip), crate::ingest::decode::archive::MAX_ARCHIVE_BYTES).unwrap().unwrap()
    }

    pub fn edit(files: &mut [(String, String)], name: &str, f: impl Fn(&str) -> String) {
        let text = &mut files.iter_mut().find(|(n, _)| n == name).unwrap().1;
        *text = f(text);
    }

    fn user<'a>(ops: &'a [RowOp], ext: &str) -> &'a RowOp {
        ops.iter()
            .find(|o| matches!(&o.target, Target::User { fields, .. } if fields.external_id.as_deref() == Some(ext)))
            .unwrap_or_else(|| panic!("no operation for {ext}: {ops:#?}"))
    }

    fn fields(op: &RowOp) -> (&str, &crate::model::UserFields) {
        match &op.target {
            Target::User { email, fields } => (email, fields),
            _ => panic!("not a user"),
        }
    }

    fn tenant() -> Tenant {
        Tenant::new("district", vec!["it@district.example.org".into()])
    }

    /// A tenant holding files to its own template: a bundle's sheets are ours, made from the
    /// standard, so `rosterdrop validate` reads it as the upload does, not refused for columns.
    #[test]
    fn a_strict_template_tenant_validates_a_bundle_as_its_upload_reads_it() {
        let strict = Tenant { strict_template: true, ..tenant() };
        let p = prepare(&bundle("district-1.1", |_| {}), &strict, Mode::Upsert).unwrap();
        let loose = prepare(&bundle("district-1.1", |_| {}), &tenant(), Mode::Upsert).unwrap();
        assert!(!p.ops.is_empty());
        assert_eq!((p.ops, p.outcomes), (loose.ops, loose.outcomes));
    }

    #[test]
    fn a_1_1_district_bundle_becomes_orgs_and_users_with_types_organizations_and_associations() {
        let p = prepare(&bundle("district-1.1", |_| {}), &tenant(), Mode::Upsert).unwrap();
        assert!(p.outcomes.iter().all(|o| o.change == Some(crate::model::Change::Read)), "{:#?}", p.outcomes);
        // Every enrollment and class has its row, saying what it was read into.
        let read = |sheet: u32, line: u32| p.outcomes.iter().find(|o| o.row == row_id(sheet, line)).map(|o| o.message.clone()).unwrap();
        assert_eq!(read(3, 3), "student \"usr-st1\" in class \"cls-1\": read with users.csv line 6");
        assert_eq!(read(3, 2), "teacher \"usr-t1\" of class \"cls-1\": read as its students' Instructor");
        assert_eq!(read(2, 2), "read with enrollments.csv lines 2, 3, 4");
        let orgs: Vec<&RowOp> = p.ops.iter().filter(|o| matches!(o.target, Target::Org { .. })).collect();
        assert_eq!(orgs.len(), 3);
        assert_eq!(p.ops.len(), 3 + 8);
        let (email, st1) = fields(user(&p.ops, "usr-st1"));
        assert_eq!(email, "ava.lin@students.riverbend.example.org");
        assert_eq!(st1.user_type.as_deref(), Some("Student"));
        assert_eq!(st1.org.as_deref(), Some("Alder Elementary"));
        assert_eq!(st1.associations.get("parent").map(String::as_str), Some("pat.nguyen@home.example.net"));
        assert_eq!(st1.associations.get("instructor").map(String::as_str), Some("mara.ortiz@riverbend.example.org"));
        // A student without email: known by username, with the guardian the rule asks for.
        let (key, st4) = fields(user(&p.ops, "usr-st4"));
        assert_eq!(key, "user:sbrooks");
        assert_eq!(st4.associations.get("parent").map(String::as_str), Some("lee.brooks@home.example.net"));
        assert_eq!(st4.associations.get("instructor").map(String::as_str), Some("ken.walsh@riverbend.example.org"));
        assert_eq!(fields(user(&p.ops, "usr-t1")).1.user_type.as_deref(), Some("Instructor"));
        assert_eq!(fields(user(&p.ops, "usr-g1")).1.user_type.as_deref(), Some("Parent"));
        // Row ids are the lines of each file: users.csv is the second sheet.
        assert_eq!(user(&p.ops, "usr-st1").row, row_id(1, 6));
        assert!(p.warnings.iter().any(|w| w.contains("academicsessions.csv ignored")), "{:?}", p.warnings);
    }

    #[test]
    fn a_1_2_bundle_takes_roles_from_roles_csv_and_the_primary_teacher_first() {
        let p = prepare(&bundle("district-1.2", |_| {}), &tenant(), Mode::Upsert).unwrap();
        assert!(p.outcomes.iter().all(|o| o.change == Some(crate::model::Change::Read)), "{:#?}", p.outcomes);
        let (_, s1) = fields(user(&p.ops, "cv-s1"));
        assert_eq!(s1.user_type.as_deref(), Some("Student"));
        assert_eq!(s1.org.as_deref(), Some("East Cedar School"));
        // Two teachers in Science 4: the primary one (listed second) is the Instructor.
        assert_eq!(s1.associations.get("instructor").map(String::as_str), Some("ravi.patel@cedar.example.edu"));
        assert_eq!(fields(user(&p.ops, "cv-p1")).1.user_type.as_deref(), Some("Parent"));
        assert!(p.warnings.iter().any(|w| w.contains("several teachers")), "{:?}", p.warnings);
    }

    #[test]
    fn bulk_is_replace_delta_is_upsert_and_tobedeleted_deletes_in_a_delta() {
        let delta = |files: &mut Vec<(String, String)>| {
            edit(files, "manifest.csv", |t| t.replace(",bulk", ",delta"));
            edit(files, "users.csv", |t| {
                t.replace("usr-st3,,,true", "usr-st3,tobedeleted,,true").replace("usr-t2,,,true", "usr-t2,,,false")
                    + "usr-gone,tobedeleted,,,,,,,,,,,,,,,,\n"
            });
        };
        let b = |name, change: &dyn Fn(&mut Files)| read(bundle(name, change));
        assert_eq!(b("district-1.1", &|_| {}).mode(None).unwrap(), Mode::Replace);
        assert_eq!(b("district-1.1", &|_| {}).mode(Some(Mode::Upsert)).unwrap(), Mode::Upsert);
        assert!(b("district-1.1", &|_| {}).mode(Some(Mode::Add)).unwrap_err().contains("cannot go in the add folder"));
        assert_eq!(b("district-1.1", &delta).mode(None).unwrap(), Mode::Upsert);
        assert!(b("district-1.1", &delta).mode(Some(Mode::Replace)).unwrap_err().contains("says delta"));
        let p = prepare(&bundle("district-1.1", delta), &tenant(), Mode::Upsert).unwrap();
        assert_eq!(user(&p.ops, "usr-st3").action, Action::Delete);
        assert_eq!(user(&p.ops, "usr-t2").action, Action::Disable);
        let gone = p.outcomes.iter().find(|o| o.row == row_id(1, 10)).unwrap();
        assert!(gone.message.contains("deletes \"usr-gone\" without its email, and no user of this tenant has that sourcedId"), "{gone:?}");
        // In a bulk bundle the same records are left out of the list (replace disables them).
        let p = prepare(
            &bundle("district-1.1", |f| edit(f, "users.csv", |t| t.replace("usr-st3,,,true", "usr-st3,tobedeleted,,true"))),
            &tenant(),
            Mode::Replace,
        )
        .unwrap();
        let o = p.outcomes.iter().find(|o| o.row == row_id(1, 8)).unwrap();
        assert_eq!((o.status, o.message.contains("left out of the list")), (Status::Skipped, true), "{o:?}");
    }

    #[test]
    fn records_the_bundle_cannot_resolve_fail_their_row_naming_file_line_and_id() {
        let p = prepare(
            &bundle("district-1.1", |f| {
                edit(f, "users.csv", |t| {
                    t.replace("usr-t2,,,true,org-s2,teacher", "usr-t1,,,true,org-s2,teacher")
                        .replace("usr-g1,,,true,org-s1,guardian", "usr-g1,,,true,org-s1,administrator")
                        .replace("org-s2,parent,lbrooks", "org-s9,parent,lbrooks")
                        .replace(
                            "omar.haddad@students.riverbend.example.org,,,usr-g2",
                            "omar.haddad@students.riverbend.example.org,,,usr-nobody",
                        )
                });
                edit(f, "enrollments.csv", |t| t.replace("enr-6,,,cls-2", "enr-6,,,cls-404"));
            }),
            &tenant(),
            Mode::Upsert,
        )
        .unwrap();
        let msg = |line: u32| {
            p.outcomes.iter().find(|o| o.row == row_id(1, line)).map(|o| o.message.clone()).unwrap_or_else(|| panic!("line {line}: {p:#?}"))
        };
        assert!(msg(3).contains("duplicate sourcedId \"usr-t1\": users.csv line 2"), "{}", msg(3));
        assert!(msg(4).contains("administrator role"), "{}", msg(4));
        assert!(msg(5).contains("\"org-s9\" is in no file of this bundle"), "{}", msg(5));
        assert!(msg(6).starts_with("guardian \"usr-g1\" (users.csv line 4) cannot be created (role \"administrator\""), "{}", msg(6));
        assert!(msg(8).contains("\"usr-nobody\", which is in no file of this bundle and not in the directory"), "{}", msg(8));
        assert!(msg(9).contains("enrollments.csv line 7: classSourcedId \"cls-404\" is not in classes.csv"), "{}", msg(9));
        assert_eq!(
            p.outcomes.iter().filter(|o| o.status == Status::Failure).count(),
            7,
            "line 7 names the same guardian: {:#?}",
            p.outcomes
        );
    }

    #[test]
    fn a_delta_bundle_of_users_alone_finds_their_schools_and_guardians_in_the_directory() {
        let delta = bundle("district-1.1", |f| {
            edit(f, "manifest.csv", |t| t.replace("file.users,bulk", "file.users,delta").replace(",bulk", ",absent"));
            f.retain(|(n, _)| n == "manifest.csv" || n == "users.csv");
            edit(f, "users.csv", |t| {
                t.lines().filter(|l| !l.starts_with("usr-g") && !l.starts_with("usr-t")).collect::<Vec<_>>().join("\n")
            });
        });
        let b = read(delta);
        assert_eq!(b.outside_orgs(), vec!["org-s1", "org-s2"]);
        assert_eq!(b.outside_users(), vec!["usr-g1", "usr-g2", "usr-st2", "usr-st4"], "guardians, and users without email");
        let users = HashMap::from([("usr-g1".to_string(), "pat.nguyen@home.example.net".to_string())]);
        let orgs = HashMap::from([("org-s1".to_string(), "Alder Elementary".to_string())]);
        let t = b.translate(&users, &orgs, "ExternalId");
        let users_sheet = &t.tables[0];
        let row = |line: u32| &users_sheet.rows.iter().find(|(n, _)| *n == line).unwrap().1;
        // usr-st1 (line 2): its school and guardian come from the directory.
        assert_eq!((row(2)[8].as_str(), row(2)[9].as_str()), ("Alder Elementary", "pat.nguyen@home.example.net"));
        assert!(!t.verdicts.contains_key(&row_id(0, 2)));
        // usr-st3 (line 4): neither its school nor its guardian is known anywhere.
        assert!(t.verdicts[&row_id(0, 4)].message.contains("\"org-s2\" is in no file of this bundle"), "{:?}", t.verdicts);
    }

    #[test]
    fn a_delta_deleting_organizations_by_sourcedid_alone_finds_their_names_in_the_directory() {
        let delta = bundle("district-1.1", |f| {
            f.retain(|(n, _)| n == "manifest.csv" || n == "orgs.csv");
            edit(f, "manifest.csv", |t| t.replace("file.orgs,bulk", "file.orgs,delta").replace(",bulk", ",absent"));
            edit(f, "orgs.csv", |t| {
                t.lines().take(1).map(|l| format!("{l}\n")).collect::<String>() + "org-s2,tobedeleted,,,,,\norg-s7,tobedeleted,,,,,\n"
            });
        });
        let b = read(delta);
        assert_eq!(b.outside_orgs(), vec!["org-s2", "org-s7"]);
        let orgs = HashMap::from([("org-s2".to_string(), "Birch Middle".to_string())]);
        let t = b.translate(&HashMap::new(), &orgs, "ExternalId");
        assert_eq!(t.tables[0].rows[0].1[..3], ["Org".to_string(), "Delete".into(), "Birch Middle".into()]);
        assert!(!t.verdicts.contains_key(&row_id(0, 2)));
        assert!(t.verdicts[&row_id(0, 3)].message.contains("deletes \"org-s7\" without its name, and no organization"), "{:?}", t.verdicts);
    }

    #[test]
    fn bad_bundles_are_refused_with_what_to_fix() {
        let drop = |name: &'static str| move |f: &mut Vec<(String, String)>| f.retain(|(n, _)| n != name);
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(drop("manifest.csv")), "no manifest.csv"),
            (Box::new(drop("users.csv")), "says users.csv is bulk, but the bundle has no users.csv"),
            (
                Box::new(|f: &mut Vec<(String, String)>| {
                    edit(f, "manifest.csv", |t| t.replace("oneroster.version,1.1", "oneroster.version,1.0"))
                }),
                "reads OneRoster 1.1 and 1.2",
            ),
            (
                Box::new(|f: &mut Vec<(String, String)>| edit(f, "manifest.csv", |t| t.replace("file.users,bulk", "file.users,sometimes"))),
                "absent, bulk or delta",
            ),
            (
                Box::new(|f: &mut Vec<(String, String)>| edit(f, "users.csv", |t| t.replacen("role,", "kind,", 1))),
                "users.csv has no role column",
            ),
            (Box::new(|f: &mut Vec<(String, String)>| f.push(("nested.zip".into(), "PK\u{3}\u{4}".into()))), "another archive"),
        ];
        for (change, says) in cases {
            let e = prepare(&bundle("district-1.1", change), &tenant(), Mode::Upsert).unwrap_err();
            assert!(e.contains(says), "expected {says:?} in {e}");
        }
        let e = prepare(&zip_of(&[("notes.txt", b"hello")]), &tenant(), Mode::Upsert).unwrap_err();
        assert!(e.contains("neither a workbook"), "{e}");
    }

    #[test]
    fn a_bundle_zipped_as_a_folder_is_read_from_that_folder() {
        let flat = bundle("district-1.1", |_| {});
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(flat)).unwrap();
        let mut files = Vec::new();
        for i in 0..zip.len() {
            let mut f = zip.by_index(i).unwrap();
            let mut text = Vec::new();
            std::io::Read::read_to_end(&mut f, &mut text).unwrap();
            files.push((format!("export/{}", f.name().unwrap()), text));
        }
        let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, t)| (n.as_str(), t.as_slice())).collect();
        let p = prepare(&zip_of(&refs), &tenant(), Mode::Upsert).unwrap();
        assert_eq!(p.ops.len(), 11);
    }
}
