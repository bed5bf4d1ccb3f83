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
            vec!["User".into(), "Org".into()],
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
    cols
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
/// Rows of the data sheet that get dropdowns.
const VALIDATED_ROWS: u32 = 10_000;

pub fn xlsx(tenant: Option<&Tenant>) -> Result<Vec<u8>> {
    use rust_xlsxwriter::{DataValidation, Format, Workbook};
    let err = |e: rust_xlsxwriter::XlsxError| Error::Build { what: "template", message: e.to_string() };
    let cols = columns(tenant);
    let bold = Format::new().set_bold();
    let mut wb = Workbook::new();

    let readme = wb.add_worksheet();
    readme.set_name("Read Me").map_err(err)?;
    readme.set_column_width(0, 110).map_err(err)?;
    for (i, line) in README.iter().enumerate() {
        if i == 0 || line.starts_with("Modes") || line.starts_with("Results") {
            readme.write_string_with_format(i as u32, 0, *line, &bold).map_err(err)?;
        } else {
            readme.write_string(i as u32, 0, *line).map_err(err)?;
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
            defs.write_string(r, c as u16, v.as_str()).map_err(err)?;
        }
    }
    defs.set_freeze_panes(1, 0).map_err(err)?;

    let data = wb.add_worksheet();
    data.set_name(DATA_SHEET).map_err(err)?;
    let header = Format::new().set_bold().set_background_color(rust_xlsxwriter::Color::RGB(0xD9E1F2));
    for (c, col) in cols.iter().enumerate() {
        let c = c as u16;
        data.write_string_with_format(0, c, &col.name, &header).map_err(err)?;
        data.set_column_width(c, (col.name.len() as f64 + 6.0).max(14.0)).map_err(err)?;
        // Excel's list validation takes at most 255 characters of choices.
        if !col.choices.is_empty() && col.choices.join(",").len() < 250 {
            let dv = DataValidation::new()
                .allow_list_strings(&col.choices.iter().map(String::as_str).collect::<Vec<_>>())
                .map_err(err)?
                .set_error_title(format!("{} value", col.name))
                .map_err(err)?
                .set_error_message(format!("Allowed: {}", col.allowed.chars().take(200).collect::<String>()))
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
