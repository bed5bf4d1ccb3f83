//! Header row -> known columns. Case-insensitive, whitespace-trimmed, with the aliases people use.

use crate::fields::{Field, norm};
use crate::model::Tenant;

const FIELDS: usize = Field::OneRosterRecords as usize + 1;

/// Which column holds which field.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Mapping {
    columns: Vec<(Field, usize)>,
    /// The same, indexed by field: every row asks for every field.
    by_field: [Option<usize>; FIELDS],
    /// Tenant custom attribute columns: (attribute index in the tenant's list, column).
    pub custom: Vec<(usize, usize)>,
    /// Problems that do not stop the file (shown in the result email).
    pub warnings: Vec<String>,
    /// A Status column that is not our result files' (an HR export's `Active`/`Terminated`):
    /// not read, but a row it marks as a leaver fails rather than keep the user active.
    pub their_status: Option<usize>,
}

impl Mapping {
    pub fn column(&self, field: Field) -> Option<usize> {
        self.by_field[field as usize]
    }
    pub fn has(&self, field: Field) -> bool {
        self.column(field).is_some()
    }
    /// Column `i` is one of our result files' (`is_result_column`).
    pub fn is_ours(&self, i: usize) -> bool {
        [Field::Status, Field::Message, Field::Changes, Field::UserId].iter().any(|f| self.column(*f) == Some(i))
    }
    /// The roster fields read, with their columns.
    pub fn fields(&self) -> impl Iterator<Item = (Field, usize)> + '_ {
        self.columns.iter().copied()
    }
}

/// Column `i` is one of our own result files' in a file dropped again: ingest reads nothing from
/// it, and the result files write their own in its place (echoed, a failed-rows file made from a
/// failed-rows file had two Message columns and was refused). Ours are where we write them: a
/// result file's `Status, Message, Changes, UserId` in a row (the disabled-users file's first
/// three), a failed-rows file's last column `Message`.
/// Elsewhere the names are the file's own (an HR export's `Status` of `Terminated`, its `User ID`),
/// echoed as they came: taken for ours, they vanished from the result and failed-rows files.
/// `id_column`: the tenant's name for its ExternalId column, which is theirs whatever its name.
pub fn is_result_column<S: AsRef<str>>(headers: &[S], i: usize, id_column: Option<&str>) -> bool {
    let field = |j: usize| {
        let h = headers.get(j)?.as_ref().trim();
        if id_column.is_some_and(|c| norm(c) == norm(h)) { None } else { Field::from_header(h) }
    };
    // The columns at `i + k` (k may be negative) are `fields`.
    let run = |k: isize, fields: &[Field]| {
        fields.iter().enumerate().all(|(n, f)| i.checked_add_signed(k + n as isize).and_then(field) == Some(*f))
    };
    match field(i) {
        // A failed-rows file's Message is its last header; a result file's is between Status
        // and Changes. An export's own `Message` elsewhere is the file's.
        Some(Field::Message) => {
            headers[i + 1..].iter().all(|h| h.as_ref().trim().is_empty()) || run(-1, &[Field::Status, Field::Message, Field::Changes])
        }
        // An HR export's last column `Status` then our failed-rows file's Message: theirs.
        Some(Field::Status) => run(0, &[Field::Status, Field::Message, Field::Changes]),
        Some(Field::Changes) => run(-2, &[Field::Status, Field::Message, Field::Changes]),
        Some(Field::UserId) => run(-3, &[Field::Status, Field::Message, Field::Changes, Field::UserId]),
        _ => false,
    }
}

/// A file we wrote: it has our Message column (its delimited cells and header names carry
/// `finalize::write::neutralise`'s apostrophe, which ingest and finalize's echo take off).
pub fn has_our_message<S: AsRef<str>>(headers: &[S], id_column: Option<&str>) -> bool {
    (0..headers.len())
        .any(|i| Field::from_header(headers[i].as_ref().trim()) == Some(Field::Message) && is_result_column(headers, i, id_column))
}

/// Map the header row, or say why the whole file is refused.
pub fn map_headers(headers: &[String], tenant: &Tenant) -> Result<Mapping, String> {
    let mut mapping = Mapping::default();
    let mut unknown = Vec::new();
    let mut unnamed = Vec::new();
    for (i, h) in headers.iter().enumerate() {
        let trimmed = h.trim();
        if trimmed.is_empty() {
            unnamed.push(i + 1);
            continue;
        }
        let tenant_alias = tenant.external_id_column.as_deref().is_some_and(|c| norm(c) == norm(trimmed));
        let field = match if tenant_alias { Some(Field::ExternalId) } else { Field::from_header(trimmed) } {
            // Named as our result columns but not where we write them: the file's own.
            Some(Field::Status | Field::Message | Field::Changes | Field::UserId)
                if !is_result_column(headers, i, tenant.external_id_column.as_deref()) =>
            {
                None
            }
            f => f,
        };
        match field {
            Some(f) => {
                if let Some(prev) = mapping.column(f) {
                    return Err(format!(
                        "columns {} (\"{}\") and {} (\"{}\") both mean {}; keep one of them",
                        prev + 1,
                        crate::wording::quoted(headers[prev].trim()),
                        i + 1,
                        crate::wording::quoted(trimmed),
                        f.name()
                    ));
                }
                mapping.columns.push((f, i));
                mapping.by_field[f as usize] = Some(i);
            }
            None => match tenant.attributes.iter().position(|a| norm(&a.name) == norm(trimmed)) {
                Some(a) if mapping.custom.iter().any(|(x, _)| *x == a) => {
                    return Err(format!("two columns are the attribute \"{}\"; keep one of them", tenant.attributes[a].name));
                }
                Some(a) => mapping.custom.push((a, i)),
                None => {
                    if Field::from_header(trimmed) == Some(Field::Status) && mapping.their_status.is_none() {
                        mapping.their_status = Some(i);
                    }
                    unknown.push(trimmed.to_string());
                }
            },
        }
    }
    if tenant.strict_template {
        check_template(headers, tenant)?;
        if !unknown.is_empty() {
            let list = header_list(&unknown);
            return Err(format!("unknown columns {list}: this tenant accepts only its template and attribute columns"));
        }
    } else {
        // One line per column up to a few, then a count: a million stray columns make one warning.
        let named: Vec<String> = unknown
            .iter()
            .take(10)
            .map(|u| {
                let hint = match near_field(u, &mapping) {
                    Some(f) => format!(" (if it is {}, name it so)", f.name()),
                    None => String::new(),
                };
                format!("column \"{}\" is not a roster column and was ignored{hint}", crate::wording::quoted(u))
            })
            .collect();
        mapping.warnings.extend(named);
        if unknown.len() > 10 {
            mapping.warnings.push(format!("{} more columns are not roster columns and were ignored", unknown.len() - 10));
        }
    }
    match unnamed.as_slice() {
        [] => {}
        [one] => mapping.warnings.push(format!("column {one} has no header; its values were ignored")),
        many => mapping.warnings.push(format!(
            "{} columns have no header (the first is column {}); their values were ignored",
            many.len(),
            many[0]
        )),
    }
    if !mapping.has(Field::Email) && !mapping.has(Field::Username) && !mapping.has(Field::OrgName) {
        // One cell of text (`Staff roster - January`): a title above the column names, which the
        // first row with text is taken for.
        let mut texts = headers.iter().map(|h| h.trim()).filter(|h| !h.is_empty());
        let (title, short) = match (texts.next(), texts.next()) {
            (Some(only), None) => (Field::from_header(only).is_none(), only.split_whitespace().count() < 3),
            _ => (false, false),
        };
        let hint = if title && short {
            // `Staff List`, `Employees`: a short title, or the name of a one-column list of emails.
            "; if that is a title, delete the rows above the column names so they come first (the first row with text must be the column names); if the column holds the emails, name it Email"
        } else if title {
            "; that looks like a title: the first row with text must be the column names, so delete the rows above them"
        } else if let Some(at) = headers.iter().position(|h| h.contains('@')) {
            // A person's row, not names: not quoted (the message is the job's, shown to the
            // support team and carried by its events, which hold no row data).
            return Err(format!(
                "the required column Email is missing: the first row holds an email address (column {}), so it is a row of data, not the column names: add the header row (Email, First Name, ...) above it",
                crate::ingest::decode::column_name(at)
            ));
        } else if mapping.fields().next().is_none()
            && mapping.custom.is_empty()
            && headers.iter().filter(|h| !h.trim().is_empty()).count() > 1
        {
            // Labels over groups of columns (`Personal`, `Contact`) or a title in several cells:
            // the column names are on a row below.
            "; none of these is a roster column: if the column names are on a row below, delete the rows above them so they come first; otherwise add an Email column, or use the template"
        } else {
            ". Add an Email column, or use the template"
        };
        return Err(format!("the required column Email is missing (the header row has: {}){hint}", header_list(headers)));
    }
    Ok(mapping)
}

/// The roster column a header nearly names (`Frist Name`, `Emial`), if the file has no column
/// for it already: its values are about to be ignored.
fn near_field(header: &str, mapping: &Mapping) -> Option<Field> {
    let key = norm(header);
    // Two edits at most: a name of another length by more than 2 is none (and a 15 MB header
    // costs nothing).
    let len = key.chars().count();
    if !(4..=40).contains(&len) {
        return None;
    }
    let more = [Field::ExternalId, Field::NewEmail, Field::ParentOrg, Field::LicencePool];
    Field::ALL
        .iter()
        .chain(&more)
        .filter(|f| !mapping.has(**f))
        .filter(|f| norm(f.name()).chars().count().abs_diff(len) <= 2)
        .map(|f| (*f, strsim::damerau_levenshtein(&key, &norm(f.name()))))
        .filter(|(f, d)| *d <= 2.min(norm(f.name()).chars().count() / 4))
        .min_by_key(|(_, d)| *d)
        .map(|(f, _)| f)
}

/// The header row as a message quotes it: the first 20 headers, each at most 64 characters.
pub fn header_list<S: AsRef<str>>(headers: &[S]) -> String {
    const SHOWN: usize = 20;
    let mut list: Vec<String> = headers.iter().take(SHOWN).map(|h| format!("\"{}\"", crate::wording::quoted(h.as_ref().trim()))).collect();
    if headers.len() > SHOWN {
        list.push(format!("and {} more", headers.len() - SHOWN));
    }
    list.join(", ")
}

/// Strict template: the columns must be exactly the tenant's template, in any order.
fn check_template(headers: &[String], tenant: &Tenant) -> Result<(), String> {
    let expected: Vec<String> = if tenant.template_columns.is_empty() {
        let pools = (!tenant.licence_pools.is_empty()).then(|| Field::LicencePool.name().to_string());
        let external = tenant.uses_external_ids().then(|| tenant.external_id_header().to_string());
        Field::ALL
            .iter()
            .map(|f| f.name().to_string())
            .chain(external)
            .chain(pools)
            .chain(tenant.attributes.iter().map(|a| a.name.clone()))
            .collect()
    } else {
        tenant.template_columns.clone()
    };
    let norm = |s: &str| s.trim().to_lowercase();
    let ours: Vec<String> = headers
        .iter()
        .map(|h| norm(h))
        .filter(|h| {
            !h.is_empty()
                && !matches!(
                    Field::from_header(h),
                    Some(Field::Status | Field::Message | Field::Changes | Field::UserId | Field::OneRosterRecords)
                )
        })
        .collect();
    let theirs: Vec<String> = expected.iter().map(|h| norm(h)).collect();
    let added: Vec<&String> = ours.iter().filter(|h| !theirs.contains(h)).collect();
    let missing: Vec<&String> = expected.iter().filter(|h| !ours.contains(&norm(h))).collect();
    if added.is_empty() && missing.is_empty() {
        return Ok(());
    }
    let mut parts = Vec::new();
    if !added.is_empty() {
        parts.push(format!("columns not in the template: {}", header_list(&added)));
    }
    if !missing.is_empty() {
        parts.push(format!("template columns missing: {}", header_list(&missing)));
    }
    Err(format!("this tenant requires its exact upload template; {}. Download the template and copy your rows into it", parts.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant() -> Tenant {
        Tenant::new("acme", vec!["a@acme.com".into()])
    }
    fn h(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// Messages quote headers bounded (the first 20, each at most 64 characters), strict
    /// template or not: a header row of 5,000 columns of 200 characters made a rejection
    /// reason of a megabyte, past what the job's item (400 KB) and an email hold.
    #[test]
    fn messages_quote_a_huge_header_row_bounded() {
        let huge: Vec<String> = (0..5_000).map(|i| format!("{i}{}", "x".repeat(200))).collect();
        let mut strict = tenant();
        strict.strict_template = true;
        let mut row = h(&["Email"]);
        row.extend(huge.iter().cloned());
        let refused = map_headers(&row, &strict).unwrap_err();
        assert!(refused.len() < 3_000 && refused.contains("and 4980 more"), "{} bytes: {}", refused.len(), &refused[..200]);
        let mut strict_named = strict.clone();
        strict_named.template_columns = huge.clone();
        let missing = map_headers(&h(&["Email"]), &strict_named).unwrap_err();
        assert!(missing.len() < 3_000 && missing.contains("template columns missing"), "{} bytes", missing.len());
        // In the template but no roster column: the unknown-columns refusal.
        strict_named.template_columns.insert(0, "Email".into());
        let unknown = map_headers(&row, &strict_named).unwrap_err();
        assert!(unknown.len() < 3_000 && unknown.starts_with("unknown columns"), "{} bytes: {}", unknown.len(), &unknown[..100]);
        // Two spellings of one column, each half a megabyte.
        let twice = map_headers(&h(&[&format!("E{}mail", "_".repeat(500_000)), &format!("E{}mail", "-".repeat(500_000))]), &tenant());
        let twice = twice.unwrap_err();
        assert!(twice.len() < 500 && twice.contains("both mean Email"), "{} bytes", twice.len());
        let warned = map_headers(&row, &tenant()).unwrap().warnings;
        let total: usize = warned.iter().map(String::len).sum();
        assert!(warned.len() == 11 && total < 2_000, "{} warnings, {total} bytes", warned.len());
    }

    #[test]
    fn aliases_and_case_are_accepted() {
        let m = map_headers(&h(&[" E-mail ", "First Name", "ORG", "Role", "email_address_x"]), &tenant()).unwrap();
        assert_eq!(m.column(Field::Email), Some(0));
        assert_eq!(m.column(Field::FirstName), Some(1));
        assert_eq!(m.column(Field::OrgName), Some(2));
        assert_eq!(m.column(Field::RoleName), Some(3));
        assert_eq!(m.warnings, vec!["column \"email_address_x\" is not a roster column and was ignored"]);
    }

    #[test]
    fn missing_email_column_names_what_the_header_has() {
        let err = map_headers(&h(&["Name", "Phone"]), &tenant()).unwrap_err();
        assert!(err.contains("required column Email is missing"), "{err}");
        assert!(err.contains("\"Name\", \"Phone\""), "{err}");
        assert!(err.ends_with(". Add an Email column, or use the template"), "{err}");
        // A title above the column names, and a file without its header row, say so.
        let err = map_headers(&h(&["Staff roster - January 2027"]), &tenant()).unwrap_err();
        assert!(
            err.ends_with("that looks like a title: the first row with text must be the column names, so delete the rows above them"),
            "{err}"
        );
        let err = map_headers(&h(&["Ann", "ann@x.com", "Lee"]), &tenant()).unwrap_err();
        assert_eq!(
            err,
            "the required column Email is missing: the first row holds an email address (column B), so it is a row of data, not the column names: add the header row (Email, First Name, ...) above it"
        );
        // One or two words alone (`Staff List`, `Employees`): a short title, or a one-column list
        // of emails under another name. Both fixes are named ("Add an Email column" sent admins
        // whose Email column was on the next row to add another).
        for alone in ["Staff List", "Employees"] {
            let err = map_headers(&h(&[alone]), &tenant()).unwrap_err();
            assert!(
                err.ends_with("if that is a title, delete the rows above the column names so they come first (the first row with text must be the column names); if the column holds the emails, name it Email"),
                "{err}"
            );
        }
        // Labels over groups of columns, the column names on the row below.
        let err = map_headers(&h(&["", "Personal", "", "Contact"]), &tenant()).unwrap_err();
        assert!(err.ends_with("none of these is a roster column: if the column names are on a row below, delete the rows above them so they come first; otherwise add an Email column, or use the template"), "{err}");
    }

    #[test]
    fn two_columns_for_one_field_are_refused() {
        let err = map_headers(&h(&["Email", "Name", "E-mail"]), &tenant()).unwrap_err();
        assert_eq!(err, "columns 1 (\"Email\") and 3 (\"E-mail\") both mean Email; keep one of them");
    }

    /// A misspelt column was ignored with a warning that did not say which column it meant: the
    /// names under `Frist Name` were dropped and the users created without them.
    #[test]
    fn a_nearly_named_column_is_named_in_its_warning() {
        let headers: Vec<String> = ["Email", "Frist Name", "Lastname", "Phnoe", "Favourite Colour", "Emial"].map(String::from).to_vec();
        let m = map_headers(&headers, &Tenant::new("t", vec![])).unwrap();
        assert_eq!(
            m.warnings,
            [
                "column \"Frist Name\" is not a roster column and was ignored (if it is FirstName, name it so)",
                "column \"Phnoe\" is not a roster column and was ignored (if it is Phone, name it so)",
                "column \"Favourite Colour\" is not a roster column and was ignored",
                "column \"Emial\" is not a roster column and was ignored",
            ],
            "Emial is not offered: the file has its Email"
        );
    }

    #[test]
    fn strict_template_lists_the_differences() {
        let mut t = tenant();
        t.strict_template = true;
        t.template_columns = h(&["Email", "FirstName", "LastName"]);
        assert!(map_headers(&h(&["email", "LastName", "FirstName", "Status", "Message", "Changes", "UserId"]), &t).is_ok());
        let err = map_headers(&h(&["Email", "FirstName", "Shoe"]), &t).unwrap_err();
        assert!(err.contains("columns not in the template: \"shoe\""), "{err}");
        assert!(err.contains("template columns missing: \"LastName\""), "{err}");
    }

    #[test]
    fn output_columns_of_our_result_files_are_silently_accepted() {
        let m = map_headers(&h(&["Email", "Status", "Message", "Changes"]), &tenant()).unwrap();
        assert!(m.warnings.is_empty());
        let result = h(&["Email", "Shoe", "Status", "Message", "Changes", "UserId"]);
        let m = map_headers(&result, &tenant()).unwrap();
        assert_eq!(m.warnings, vec!["column \"Shoe\" is not a roster column and was ignored"]);
        assert_eq!(m.their_status, None);
        assert!((2..6).all(|i| is_result_column(&result, i, None)));
    }

    /// An HR export's own Status and User ID columns were taken for our result columns: not
    /// read, not warned about, and dropped from the result and failed-rows files.
    #[test]
    fn status_and_user_id_columns_not_where_we_write_them_are_the_files_own() {
        let hr = h(&["Email", "Status", "User ID", "Changes", "Message"]);
        let m = map_headers(&hr, &tenant()).unwrap();
        assert_eq!(m.their_status, Some(1));
        assert_eq!(
            m.warnings,
            vec![
                "column \"Status\" is not a roster column and was ignored",
                "column \"User ID\" is not a roster column and was ignored",
                "column \"Changes\" is not a roster column and was ignored",
            ]
        );
        assert_eq!((0..5).map(|i| is_result_column(&hr, i, None)).collect::<Vec<_>>(), [false, false, false, false, true]);
        assert!(has_our_message(&hr, None));
        // A failed-rows file of an export whose last column is Status: its Status stays its own.
        let failed_rows = h(&["Email", "Status", "Message"]);
        assert_eq!((0..3).map(|i| is_result_column(&failed_rows, i, None)).collect::<Vec<_>>(), [false, false, true]);
        // A tenant attribute named Status is the tenant's.
        let mut t = tenant();
        t.attributes = vec![crate::model::AttributeDef { name: "Status".into(), kind: crate::model::AttributeKind::Text }];
        let m = map_headers(&h(&["Email", "Status"]), &t).unwrap();
        assert_eq!((m.their_status, m.custom.clone()), (None, vec![(0, 1)]));
    }
}
