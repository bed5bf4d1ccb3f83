//! The column vocabulary: every field a roster may carry, its canonical header, and the names
//! people give it. Shared by the domain (`model`), ingest (header mapping) and the template.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    Type,
    Action,
    Email,
    /// The id the feeding system gives the person: unique in the tenant, and the key a row is
    /// matched by when present (so the Email can change).
    ExternalId,
    /// Without ExternalId: the address the user named by Email moves to.
    NewEmail,
    Username,
    FirstName,
    LastName,
    Phone,
    OrgName,
    /// An Org row's parent organization (by name), kept as a field.
    ParentOrg,
    RoleName,
    Department,
    Group,
    Supervisor,
    SupervisorManager,
    Parent,
    Instructor,
    Products,
    /// A named licence pool of the tenant (`licence_pools`); the default pool when blank.
    LicencePool,
    InviteUser,
    ScheduledDate,
    /// Columns our own result files add; ignored so a failed-rows file can be uploaded again as is.
    Status,
    Message,
    Changes,
    UserId,
    /// The OneRoster records a row of a bundle was built from (`ingest::oneroster`): shown, not read.
    OneRosterRecords,
}

impl Field {
    /// Canonical template order (`LicencePool` is added for tenants with named pools).
    pub const ALL: &'static [Field] = &[
        Field::Type,
        Field::Action,
        Field::Email,
        Field::Username,
        Field::FirstName,
        Field::LastName,
        Field::Phone,
        Field::OrgName,
        Field::RoleName,
        Field::Department,
        Field::Group,
        Field::Supervisor,
        Field::SupervisorManager,
        Field::Parent,
        Field::Instructor,
        Field::Products,
        Field::InviteUser,
        Field::ScheduledDate,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Field::Type => "Type",
            Field::Action => "Action",
            Field::Email => "Email",
            Field::ExternalId => "ExternalId",
            Field::NewEmail => "NewEmail",
            Field::Username => "Username",
            Field::FirstName => "FirstName",
            Field::LastName => "LastName",
            Field::Phone => "Phone",
            Field::OrgName => "OrgName",
            Field::ParentOrg => "ParentOrg",
            Field::RoleName => "RoleName",
            Field::Department => "Department",
            Field::Group => "Group",
            Field::Supervisor => "Supervisor",
            Field::SupervisorManager => "SupervisorManager",
            Field::Parent => "Parent",
            Field::Instructor => "Instructor",
            Field::Products => "Products",
            Field::LicencePool => "LicencePool",
            Field::InviteUser => "InviteUser",
            Field::ScheduledDate => "ScheduledDate",
            Field::Status => "Status",
            Field::Message => "Message",
            Field::Changes => "Changes",
            Field::UserId => "UserId",
            Field::OneRosterRecords => "OneRosterRecords",
        }
    }

    /// Header text -> field. Spaces, underscores, dashes and dots are ignored: "E-mail", "First_Name".
    pub fn from_header(header: &str) -> Option<Field> {
        let key = norm(header);
        Some(match key.as_str() {
            "type" | "usertype" | "recordtype" | "entitytype" => Field::Type,
            "action" | "operation" => Field::Action,
            "email" | "emailaddress" | "mail" | "useremail" | "emailid" => Field::Email,
            "externalid" | "extid" | "externaluserid" | "identityiduser" | "idpuserid" | "sourcedid" | "personid" => Field::ExternalId,
            "newemail" | "newemailaddress" | "changeemailto" => Field::NewEmail,
            "username" | "login" | "loginname" | "userlogin" => Field::Username,
            "firstname" | "first" | "givenname" | "forename" => Field::FirstName,
            "lastname" | "last" | "surname" | "familyname" => Field::LastName,
            "phone" | "phonenumber" | "mobile" | "mobilephone" | "telephone" | "cell" | "cellphone" => Field::Phone,
            "orgname" | "org" | "organization" | "organisation" | "organizationname" | "organisationname" | "company" => Field::OrgName,
            "parentorg" | "parentorganization" | "parentorganisation" | "parentorgname" => Field::ParentOrg,
            "rolename" | "role" => Field::RoleName,
            "department" | "dept" => Field::Department,
            "group" | "groups" | "groupname" => Field::Group,
            "supervisor" | "supervisoremail" | "manager" | "manageremail" => Field::Supervisor,
            "supervisormanager" | "supervisormanageremail" => Field::SupervisorManager,
            "parent" | "parentemail" | "guardian" => Field::Parent,
            "instructor" | "instructoremail" | "teacher" => Field::Instructor,
            "products" | "product" | "productcodes" => Field::Products,
            "licencepool" | "licensepool" | "selectlicencepool" | "selectlicensepool" | "pool" => Field::LicencePool,
            "inviteuser" | "invite" | "sendinvite" => Field::InviteUser,
            "scheduleddate" | "invitedate" | "scheduledinvitedate" => Field::ScheduledDate,
            "status" => Field::Status,
            "message" => Field::Message,
            "changes" => Field::Changes,
            "userid" => Field::UserId,
            "onerosterrecords" => Field::OneRosterRecords,
            _ => return None,
        })
    }
}

/// A header as compared: trimmed, lower-case, without spaces, underscores, hyphens or dots.
pub fn norm(s: &str) -> String {
    // Any space counts as one: a header wrapped with Alt+Enter (`Email\nAddress`), a no-break or
    // thin space from a web page, an invisible zero-width one or a byte-order mark. A form's
    // marks too: `First Name:`, `Email*` (a required column), `*Email`.
    let ignored =
        |c: char| c.is_whitespace() || matches!(c, '_' | '-' | '.' | ':' | '*' | '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}');
    // And one Unicode form: `Région` with a combining accent is the attribute `Région`.
    let key: String = crate::nfc::nfc(&s.to_lowercase()).chars().filter(|&c| !ignored(c)).collect();
    // A template's note on a column: `Email (required)`, `Phone (optional)`.
    match ["(required)", "(mandatory)", "(optional)"].iter().find_map(|note| key.strip_suffix(note)) {
        Some(name) if !name.is_empty() => name.to_string(),
        _ => key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `First\u{a0}Name` (a no-break space) was "not a roster column" and its values dropped;
    /// `Email\nAddress` (wrapped with Alt+Enter) rejected the file as having no Email column.
    #[test]
    fn headers_match_whatever_space_separates_or_wraps_their_words() {
        for header in ["First\u{a0}Name", "First\u{2009}Name", "First\nName", "First\r\nName", "\u{feff}First Name", "First\u{200b}Name"] {
            assert_eq!(Field::from_header(header), Some(Field::FirstName), "{header:?}");
        }
        assert_eq!(Field::from_header("Email\nAddress"), Some(Field::Email));
        assert_eq!(norm(" Last\tName "), "lastname");
    }

    /// A form's marks on a column: `First Name:` was "not a roster column" and its names dropped;
    /// `Email*` and `Email (required)` refused the file for want of an Email column. (`Work Email`
    /// stays a column of its own: HR exports have it beside `Email`.)
    #[test]
    fn headers_match_through_colons_required_marks_and_notes() {
        for (header, field) in [
            ("First Name:", Field::FirstName),
            ("Last Name :", Field::LastName),
            ("Email*", Field::Email),
            ("*Email", Field::Email),
            ("Email:", Field::Email),
            ("Email (required)", Field::Email),
            ("Phone (Optional)", Field::Phone),
            ("Dept.", Field::Department),
        ] {
            assert_eq!(Field::from_header(header), Some(field), "{header:?}");
        }
        assert_eq!(Field::from_header("(required)"), None, "a note alone names nothing");
        assert_eq!(Field::from_header("Notes (required)"), None);
        assert_eq!(Field::from_header("Work Email"), None, "beside Email in HR exports: not a second Email");
    }
}
