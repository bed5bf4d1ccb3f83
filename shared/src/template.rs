//! The upload template: a workbook with a "Read Me" sheet, a "Definitions" sheet and the data sheet
//! (frozen header, dropdowns), or a CSV header. Built from the same column list ingest maps.

use crate::error::{Error, Result};
use crate::fields::Field;
use crate::model::{Action, AttributeKind, Tenant};

/// One column of the template, documented.
pub struct Column {
    pub name: String,
    pub meaning: String,
    pub required: &'static str,
    pub allowed: String,
    pub example: String,
    /// Dropdown values in the data sheet.
    pub choices: Vec<String>,
}

pub fn columns(tenant: Option<&Tenant>) -> Vec<Column> {
    let roles: Vec<String> = tenant.map(|t| t.roles.iter().filter(|r| *r != "*").cloned().collect()).unwrap_or_default();
    let products = tenant.map(|t| t.products.clone()).unwrap_or_default();
    let col = |f: Field, meaning: &str, required: &'static str, allowed: String, example: &str, choices: Vec<String>| Column {
        name: f.name().to_string(),
        meaning: meaning.to_string(),
        required,
        allowed,
        example: example.to_string(),
        choices,
    };
    let actions: Vec<String> = Action::NAMES.iter().map(|a| a.to_string()).collect();
    let mut cols = vec![
        col(
            Field::Type,
            "What the row is: a user or an organization",
            "no (User)",
            "User, Org, Student, Parent, Instructor, ...".into(),
            "User",
            // Every value ingest takes: a dropdown of User and Org alone refused the user types.
            ["User", "Org"]
                .into_iter()
                .chain(crate::ingest::sheets::USER_TYPES.iter().copied().filter(|t| !t.eq_ignore_ascii_case("User")))
                .map(String::from)
                .collect(),
        ),
        col(Field::Action, "What to do; blank creates or updates", "no (Upsert)", actions.join(", "), "Create", actions.clone()),
        col(
            Field::Email,
            "The user's email address: the user's key",
            "yes, unless Username and Parent",
            "an email address".into(),
            "ana.lopez@example.com",
            vec![],
        ),
        col(Field::Username, "For users without email (students)", "no", "text; needs a Parent".into(), "ana.l", vec![]),
        col(Field::FirstName, "First name", "no", "text".into(), "Ana", vec![]),
        col(Field::LastName, "Last name", "no", "text".into(), "Lopez", vec![]),
        col(Field::Phone, "Phone number", "no", "text".into(), "+1 415 555 0100", vec![]),
        col(
            Field::OrgName,
            "The user's organization, or the organization an Org row creates",
            "for Org rows",
            "must exist or be created in the same file".into(),
            "Riverside Campus",
            vec![],
        ),
        col(
            Field::RoleName,
            "The user's role",
            "no",
            if roles.is_empty() { "one of the tenant's roles (exact case)".into() } else { roles.join(", ") },
            roles.first().map(String::as_str).unwrap_or("Learner"),
            roles.clone(),
        ),
        col(Field::Department, "Department (content targeting)", "no", "text".into(), "Sales", vec![]),
        col(Field::Group, "Groups (content targeting)", "no", "names separated by ;".into(), "Sales;All Staff", vec![]),
        col(
            Field::Supervisor,
            "The user's supervisor",
            "no",
            "email of a user who exists or is in the file".into(),
            "boss@example.com",
            vec![],
        ),
        col(
            Field::SupervisorManager,
            "The supervisor's manager",
            "no",
            "email of a user who exists or is in the file".into(),
            "director@example.com",
            vec![],
        ),
        col(
            Field::Parent,
            "The user's parent or guardian",
            "for Username rows",
            "email of a user who exists or is in the file".into(),
            "parent@example.com",
            vec![],
        ),
        col(
            Field::Instructor,
            "The user's instructor",
            "no",
            "email of a user who exists or is in the file".into(),
            "teacher@example.com",
            vec![],
        ),
        col(
            Field::Products,
            "Products to grant; with Action Expire, products to remove (blank: all)",
            "no",
            if products.is_empty() { "product codes separated by ;".into() } else { format!("{} (separated by ;)", products.join(", ")) },
            products.first().map(String::as_str).unwrap_or("LMS"),
            vec![],
        ),
    ];
    if let Some(t) = tenant.filter(|t| t.uses_external_ids()) {
        cols.insert(
            3,
            Column {
                name: t.external_id_header().to_string(),
                meaning: "The person's id in your HR or student system: a row is matched by it, so Email may change".into(),
                required: if t.external_id_required { "yes" } else { "no" },
                allowed: format!("text, up to {} characters, unique", crate::model::MAX_EXTERNAL_ID_CHARS),
                example: "E-10023".into(),
                choices: vec![],
            },
        );
    }
    if let Some(t) = tenant.filter(|t| !t.licence_pools.is_empty()) {
        let pools: Vec<String> = t.licence_pools.keys().cloned().collect();
        cols.push(col(
            Field::LicencePool,
            "The licence pool the user's licence comes from (blank: the user's pool, or the default)",
            "no",
            pools.join(", "),
            &pools[0],
            pools.clone(),
        ));
    }
    cols.extend([
        col(
            Field::InviteUser,
            "Send the activation email when this row creates the user",
            "no",
            "TRUE or FALSE".into(),
            "TRUE",
            vec!["TRUE".into(), "FALSE".into()],
        ),
        col(
            Field::ScheduledDate,
            "When to send the activation email (UTC)",
            "no",
            "YYYY-MM-DD or YYYY-MM-DD HH:MM".into(),
            "2026-09-01",
            vec![],
        ),
    ]);
    for a in tenant.map(|t| t.attributes.as_slice()).unwrap_or_default() {
        let (allowed, example, choices) = match &a.kind {
            AttributeKind::Text => ("text, up to 256 characters".to_string(), "text".to_string(), vec![]),
            AttributeKind::Number => ("a number".to_string(), "42".to_string(), vec![]),
            AttributeKind::Date => ("a date, YYYY-MM-DD".to_string(), "2026-09-01".to_string(), vec![]),
            AttributeKind::OneOf { values } => (values.join(", "), values[0].clone(), values.clone()),
        };
        cols.push(Column {
            name: a.name.clone(),
            meaning: format!("{} (this tenant's attribute)", a.name),
            required: "no",
            allowed,
            example,
            choices,
        });
    }
    match tenant.filter(|t| t.strict_template && !t.template_columns.is_empty()) {
        // A strict tenant accepts exactly its own columns: its template is those, in its order
        // (the standard list was refused when filled in and dropped back).
        Some(t) => t
            .template_columns
            .iter()
            .map(|name| {
                let same = |c: &Column| {
                    crate::fields::norm(&c.name) == crate::fields::norm(name)
                        || Field::from_header(&c.name).is_some_and(|f| Field::from_header(name) == Some(f))
                };
                match cols.iter().position(same) {
                    Some(i) => Column { name: name.clone(), ..cols.swap_remove(i) },
                    None => Column {
                        name: name.clone(),
                        meaning: format!("{name} (this tenant's column)"),
                        required: "no",
                        allowed: "text".into(),
                        example: String::new(),
                        choices: vec![],
                    },
                }
            })
            .collect(),
        None => cols,
    }
}

const README: &[&str] = &[
    "How to fill this template",
    "",
    "1. Fill the Roster sheet: one row per user (or per organization, with Type = Org). Keep the header row.",
    "2. Only Email is required for users. A blank cell leaves the stored value unchanged when a user is updated.",
    "3. The Definitions sheet explains every column and the values it accepts. Dropdowns offer the allowed values.",
    "4. Save as XLSX (or CSV) and drop the file in incoming/<tenant>/ of the bucket, or run: rosterdrop submit FILE --tenant <tenant>",
    "",
    "Modes: the folder after the tenant",
    "  incoming/<tenant>/                upsert: create new users, update existing ones (default)",
    "  incoming/<tenant>/add/            add: new users only; existing users fail",
    "  incoming/<tenant>/validate/       validate: a dry run, nothing changes; you get the full result",
    "  incoming/<tenant>/replace/        replace: the file is the complete list; users not in it are disabled",
    "  incoming/<tenant>/replace-force/  replace, never held for approval",
    "",
    "Holds: a file that would delete or disable more than 10% of the tenant's active users (or update more than 75%)",
    "is not applied: the admins receive a preview of every change and approve or discard it.",
    "",
    "Results: the admins receive an email with the result file (every row with Status, Message and Changes) and a file of",
    "only the failed rows: fix those rows and upload that file again.",
    "",
    "Other sheets: a sheet named Students, Parents or Instructors gives its rows that user type; sheets named",
    "Read Me, Instructions or Definitions are ignored.",
];

pub const DATA_SHEET: &str = "Roster";
/// The hidden sheet of the dropdowns' choices (an instruction sheet: ingest skips it).
const LISTS_SHEET: &str = "Lists";
/// Rows of the data sheet that get dropdowns.
const VALIDATED_ROWS: u32 = 10_000;

/// Excel's longest dropdown error title and message.
const MAX_TITLE: usize = 32;
const MAX_MESSAGE: usize = 255;

/// `text` in at most `max` characters, the last an ellipsis when cut.
fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max { text.to_string() } else { text.chars().take(max - 1).chain(['…']).collect() }
}

/// A value as a cell holds it (a tenant's 2,000 roles listed in one cell outgrew Excel's 32,767).
fn fit(value: &str) -> std::borrow::Cow<'_, str> {
    crate::finalize::write::fit_cell(value)
}

pub fn xlsx(tenant: Option<&Tenant>) -> Result<Vec<u8>> {
    use rust_xlsxwriter::{DataValidation, Format, Workbook};
    let err = |e: rust_xlsxwriter::XlsxError| Error::Build { what: "template", message: e.to_string() };
    let cols = columns(tenant);
    let bold = Format::new().set_bold();
    let mut wb = Workbook::new();

    let readme = wb.add_worksheet();
    readme.set_name("Read Me").map_err(err)?;
    readme.set_column_width(0, 110).map_err(err)?;
    let holds = tenant.map(|t| t.holds).unwrap_or_default();
    for (i, line) in README.iter().enumerate() {
        // The tenant's own hold thresholds, not the defaults (0 turns a hold off).
        let line = match (line.starts_with("Holds:"), line.starts_with("is not applied"), holds.remove_percent, holds.update_percent) {
            (true, _, 0, 0) => "Holds: this tenant's files are never held for approval.".to_string(),
            (_, true, 0, 0) => String::new(),
            (true, _, 0, u) => format!("Holds: a file that would update more than {u}% of the tenant's active users"),
            (true, _, r, 0) => format!("Holds: a file that would delete or disable more than {r}% of the tenant's active users"),
            (true, _, r, u) => {
                format!("Holds: a file that would delete or disable more than {r}% of the tenant's active users (or update more than {u}%)")
            }
            _ => line.to_string(),
        };
        if i == 0 || line.starts_with("Modes") || line.starts_with("Results") {
            readme.write_string_with_format(i as u32, 0, &line, &bold).map_err(err)?;
        } else {
            readme.write_string(i as u32, 0, &line).map_err(err)?;
        }
    }

    let defs = wb.add_worksheet();
    defs.set_name("Definitions").map_err(err)?;
    for (c, h) in ["Column", "Meaning", "Required", "Allowed values", "Example"].iter().enumerate() {
        defs.write_string_with_format(0, c as u16, *h, &bold).map_err(err)?;
    }
    for (c, w) in [20, 60, 28, 60, 26].iter().enumerate() {
        defs.set_column_width(c as u16, *w).map_err(err)?;
    }
    for (r, col) in cols.iter().enumerate() {
        let r = r as u32 + 1;
        for (c, v) in [&col.name, &col.meaning, &col.required.to_string(), &col.allowed, &col.example].iter().enumerate() {
            defs.write_string(r, c as u16, fit(v)).map_err(err)?;
        }
    }
    defs.set_freeze_panes(1, 0).map_err(err)?;

    // Each column's choices down a column of a hidden sheet, which the dropdowns point at: a list
    // written into the validation itself is split at commas (`Manager, Sales` offered as two
    // choices, neither valid) and holds at most 255 characters. Ingest never reads "Lists".
    let lists = wb.add_worksheet();
    lists.set_name(LISTS_SHEET).map_err(err)?;
    lists.set_hidden(true);
    let mut ranges = Vec::with_capacity(cols.len());
    for col in &cols {
        let at = ranges.iter().filter(|r: &&Option<String>| r.is_some()).count() as u16;
        if col.choices.is_empty() {
            ranges.push(None);
            continue;
        }
        lists.write_string(0, at, fit(&col.name)).map_err(err)?;
        for (r, choice) in col.choices.iter().enumerate() {
            lists.write_string(r as u32 + 1, at, fit(choice)).map_err(err)?;
        }
        let letter = crate::ingest::decode::column_name(at as usize);
        ranges.push(Some(format!("={LISTS_SHEET}!${letter}$2:${letter}${}", col.choices.len() + 1)));
    }

    let data = wb.add_worksheet();
    data.set_name(DATA_SHEET).map_err(err)?;
    let header = Format::new().set_bold().set_background_color(rust_xlsxwriter::Color::RGB(0xD9E1F2));
    for (c, col) in cols.iter().enumerate() {
        let c = c as u16;
        data.write_string_with_format(0, c, fit(&col.name), &header).map_err(err)?;
        data.set_column_width(c, (col.name.chars().count() as f64 + 6.0).clamp(14.0, 80.0)).map_err(err)?;
        if let Some(range) = &ranges[c as usize] {
            let dv = DataValidation::new()
                .allow_list_formula(rust_xlsxwriter::Formula::new(range))
                .set_error_title(cut(&format!("{} value", col.name), MAX_TITLE))
                .map_err(err)?
                .set_error_message(cut(&format!("Allowed: {}", col.allowed), MAX_MESSAGE))
                .map_err(err)?;
            data.add_data_validation(1, c, VALIDATED_ROWS, c, &dv).map_err(err)?;
        }
    }
    data.set_freeze_panes(1, 0).map_err(err)?;
    data.set_active(true);
    wb.save_to_buffer().map_err(err)
}

/// The CSV template: the header row only.
pub fn csv(tenant: Option<&Tenant>) -> Vec<u8> {
    let names: Vec<String> = columns(tenant).into_iter().map(|c| c.name).collect();
    let mut out = names.join(",").into_bytes();
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::decode::decode;
    use crate::ingest::sheets::tables;
    use crate::model::AttributeDef;

    #[test]
    fn template_reads_back_as_an_empty_roster_with_every_column() {
        let mut t = Tenant::new("acme", vec!["a@acme.com".into()]);
        t.roles = vec!["Learner".into()];
        t.attributes = vec![AttributeDef { name: "Region".into(), kind: AttributeKind::OneOf { values: vec!["EMEA".into()] } }];
        let bytes = xlsx(Some(&t)).unwrap();
        // Read Me and Definitions are instruction sheets: ingest sees the data sheet only.
        let tables = tables(&bytes).unwrap();
        assert_eq!(tables.len(), 1);
        assert_eq!(tables[0].sheet.as_deref(), Some(DATA_SHEET));
        assert!(tables[0].rows.is_empty());
        assert_eq!(tables[0].headers.last().map(String::as_str), Some("Region"));
        assert!(crate::ingest::headers::map_headers(&tables[0].headers, &t).unwrap().warnings.is_empty());
        let header = decode(&[csv(Some(&t)), b"a@x.com\r\n".to_vec()].concat()).unwrap();
        assert_eq!(header.headers, tables[0].headers);
        assert!(!header.headers.iter().any(|h| h == "LicencePool"), "only tenants with named pools get the column");
    }

    /// A dropdown attribute with a long name (its error title outgrew Excel's 32 characters) and
    /// 2,000 roles (their list outgrew a cell's 32,767) made `rosterdrop template` fail: the
    /// tenant could save the config but never get its template.
    #[test]
    fn a_tenant_with_long_names_and_many_roles_gets_a_template_within_excels_limits() {
        let mut t = Tenant::new("acme", vec!["a@acme.com".into()]);
        t.roles = (0..2000).map(|i| format!("Role number {i:04} of the district")).collect();
        let name = "Preferred Language of Contact for the Family";
        t.attributes =
            vec![AttributeDef { name: name.into(), kind: AttributeKind::OneOf { values: vec!["English".into(), "Español".into()] } }];
        let bytes = xlsx(Some(&t)).unwrap();
        let tables = crate::ingest::decode::decode_all(&bytes).unwrap();
        let roster = tables.iter().find(|t| t.sheet.as_deref() == Some(DATA_SHEET)).unwrap();
        assert_eq!(roster.headers.last().map(String::as_str), Some(name));
        let defs = tables.iter().find(|t| t.sheet.as_deref() == Some("Definitions")).unwrap();
        let roles = defs.rows.iter().find(|(_, r)| r[0] == "RoleName").map(|(_, r)| r[3].clone()).unwrap();
        assert!(roles.chars().count() <= 32_767 && roles.contains("…[cut:"), "{}", roles.len());
        use calamine::Reader;
        let mut book = calamine::open_workbook_auto_from_rs(std::io::Cursor::new(&bytes)).unwrap();
        let lists = book.worksheet_range(LISTS_SHEET).unwrap();
        let last_role = calamine::Data::String("Role number 1999 of the district".into());
        assert!(lists.cells().any(|(r, _, v)| r == 2000 && *v == last_role), "every role a choice of the dropdown");
        assert_eq!(cut(&format!("{name} value"), MAX_TITLE).chars().count(), 32);
    }

    /// A strict tenant's template is its own columns, in its order: the standard template it
    /// handed out was refused when filled in and dropped back ("columns not in the template").
    /// Its Read Me states the tenant's hold thresholds.
    #[test]
    fn a_strict_tenants_template_is_its_own_columns_and_is_accepted_filled_in() {
        let mut t = Tenant::new("acme", vec!["a@acme.com".into()]);
        t.roles = vec!["Learner".into()];
        t.strict_template = true;
        t.template_columns = vec!["Email".into(), "First Name".into(), "RoleName".into(), "Region".into()];
        t.attributes = vec![AttributeDef { name: "Region".into(), kind: AttributeKind::OneOf { values: vec!["EMEA".into()] } }];
        t.holds.remove_percent = 3;
        t.holds.update_percent = 0;
        let names: Vec<String> = columns(Some(&t)).into_iter().map(|c| c.name).collect();
        assert_eq!(names, t.template_columns);
        let header = String::from_utf8(csv(Some(&t))).unwrap();
        let filled = format!("{header}ann@x.com,Ann,Learner,EMEA\r\n");
        let p = crate::ingest::prepare(filled.as_bytes(), &t, crate::model::Mode::Upsert).unwrap();
        assert_eq!((p.ops.len(), p.outcomes.len()), (1, 0), "{:?}", p.outcomes);
        let bytes = xlsx(Some(&t)).unwrap();
        let readme =
            crate::ingest::decode::decode_all(&bytes).unwrap().into_iter().find(|t| t.sheet.as_deref() == Some("Read Me")).unwrap();
        let text: Vec<String> = std::iter::once(readme.headers.join(" ")).chain(readme.rows.iter().map(|(_, r)| r.join(" "))).collect();
        assert!(
            text.iter().any(|l| l == "Holds: a file that would delete or disable more than 3% of the tenant's active users"),
            "{text:?}"
        );
    }

    /// Dropdown choices with commas (a role `Manager, Sales`), or more than 255 characters of
    /// them, were split or dropped: they live on a hidden Lists sheet the dropdowns point at,
    /// which ingest does not read.
    #[test]
    fn dropdown_choices_keep_their_commas_and_are_not_read_as_rows() {
        use std::io::Read;
        let mut t = Tenant::new("acme", vec!["a@acme.com".into()]);
        t.roles = vec!["Teacher".into(), "Manager, Sales".into()];
        let bytes = xlsx(Some(&t)).unwrap();
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(&bytes)).unwrap();
        let mut part = |name: &str| {
            let mut s = String::new();
            zip.by_name(name).unwrap().read_to_string(&mut s).unwrap();
            s
        };
        let (workbook, roster, lists) = (part("xl/workbook.xml"), part("xl/worksheets/sheet4.xml"), part("xl/worksheets/sheet3.xml"));
        assert!(workbook.contains(r#"<sheet name="Lists" sheetId="3" state="hidden""#), "{workbook}");
        assert!(roster.contains("<formula1>Lists!$"), "{roster}");
        assert!(lists.contains("Manager, Sales") || part("xl/sharedStrings.xml").contains("Manager, Sales"));
        let sheets: Vec<Option<String>> = tables(&bytes).unwrap().into_iter().map(|t| t.sheet).collect();
        assert_eq!(sheets, [Some(DATA_SHEET.to_string())]);
        let p = crate::ingest::prepare(&bytes, &t, crate::model::Mode::Upsert);
        assert!(p.is_err_and(|e| e.contains("no data rows") || e.contains("empty")), "a blank template has no rows");
    }

    /// A tenant with named pools gets a LicencePool column with its pools as choices, and its
    /// strict template expects that column.
    #[test]
    fn a_tenant_with_named_pools_gets_their_column_and_its_strict_template_accepts_it() {
        let mut t = Tenant::new("acme", vec!["a@acme.com".into()]);
        t.licence_pools = [("Staff".to_string(), 5), ("Students".to_string(), 9)].into();
        t.strict_template = true;
        let cols = columns(Some(&t));
        let pool = cols.iter().find(|c| c.name == "LicencePool").expect("a LicencePool column");
        assert_eq!(pool.choices, ["Staff", "Students"]);
        let header = decode(&[csv(Some(&t)), b"a@x.com\r\n".to_vec()].concat()).unwrap();
        assert!(crate::ingest::headers::map_headers(&header.headers, &t).is_ok());
        let without: Vec<String> = header.headers.iter().filter(|h| *h != "LicencePool").cloned().collect();
        assert!(crate::ingest::headers::map_headers(&without, &t).is_err(), "strict: the column is expected");
    }
}
