//! Email addresses as the mail service can deliver them. SES takes 7-bit ASCII addresses only
//! (no SMTPUTF8): an international domain is sent in its ASCII (punycode) form, and a local part
//! with non-ASCII characters cannot be delivered at all, so validation refuses it.

/// Why an otherwise valid address cannot be delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Undeliverable {
    /// Non-ASCII characters before the `@` (`josé@example.com`).
    LocalPart,
    /// A domain that has no ASCII form.
    Domain,
}

impl std::fmt::Display for Undeliverable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Undeliverable::LocalPart => {
                "has characters outside ASCII before the @, which email cannot be delivered to here; use an address without accents or other non-ASCII letters before the @"
            }
            Undeliverable::Domain => "has a domain that cannot be written in ASCII (punycode), so email cannot be delivered to it",
        })
    }
}

/// The address as it is sent: ASCII as is, an international domain as punycode.
pub fn deliverable(address: &str) -> Result<std::borrow::Cow<'_, str>, Undeliverable> {
    if address.is_ascii() {
        return Ok(address.into());
    }
    let (local, domain) = address.rsplit_once('@').ok_or(Undeliverable::Domain)?;
    if !local.is_ascii() {
        return Err(Undeliverable::LocalPart);
    }
    let ascii = idna::domain_to_ascii(domain).map_err(|_| Undeliverable::Domain)?;
    Ok(format!("{local}@{ascii}").into())
}

/// The address as a key, one spelling per mailbox (given lower-cased): an international domain
/// has several (`bücher.example`, its punycode `xn--bcher-kva.example`, full-width `ｘ.com` for
/// `x.com`), and two rows spelling one mailbox differently made two users and two invites. The
/// domain is mapped as IDNA maps it (UTS #46), to the Unicode form the directory keeps; SES's
/// events, which name the punycode form, find the invite by it too.
pub fn canonical(address: &str) -> std::borrow::Cow<'_, str> {
    let Some((local, domain)) = address.rsplit_once('@') else { return address.into() };
    if domain.is_ascii() && !domain.contains("xn--") {
        return address.into();
    }
    match idna::domain_to_unicode(domain) {
        (unicode, Ok(())) if !unicode.is_empty() => format!("{local}@{unicode}").into(),
        _ => address.into(),
    }
}

/// An address for logs: its first character and its domain (`a***@example.com`), never whole.
pub fn masked(address: &str) -> String {
    match address.rsplit_once('@') {
        Some((local, domain)) => format!("{}***@{domain}", local.chars().next().map(String::from).unwrap_or_default()),
        None => "***".into(),
    }
}

/// `text` with every word holding an `@` masked (`masked`): a message quoting cells (a header
/// row that was a row of data) is logged without the addresses in it.
pub fn mask_addresses(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains('@') {
        return text.into();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('@') {
        let is_break = |c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ',' | ';' | '(' | ')' | '<' | '>');
        let start = rest[..at].rfind(is_break).map_or(0, |i| i + rest[i..].chars().next().map_or(1, char::len_utf8));
        let end = rest[at..].find(is_break).map_or(rest.len(), |i| at + i);
        out.push_str(&rest[..start]);
        out.push_str(&masked(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_addresses_pass_idn_domains_become_punycode_and_non_ascii_local_parts_are_undeliverable() {
        assert_eq!(deliverable("ann@example.com").unwrap(), "ann@example.com");
        assert_eq!(deliverable("ann@bücher.example").unwrap(), "ann@xn--bcher-kva.example");
        assert_eq!(deliverable("josé@example.com"), Err(Undeliverable::LocalPart));
    }

    #[test]
    fn each_mailbox_has_one_key_whatever_the_spelling_of_its_domain() {
        for spelling in ["ann@bücher.example", "ann@xn--bcher-kva.example", "ann@b\u{fc}cher.example"] {
            assert_eq!(canonical(spelling), "ann@bücher.example", "{spelling}");
        }
        assert_eq!(canonical("bob@ｘ.com"), "bob@x.com");
        assert!(matches!(canonical("plain@example.com"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(canonical("no-at-sign"), "no-at-sign");
    }

    #[test]
    fn addresses_in_a_message_are_masked_for_logs() {
        let reason = "the required column Email is missing (the header row has: \"ann@x.com\", \"Ann\", bob.lee@bücher.example)";
        assert_eq!(
            mask_addresses(reason),
            "the required column Email is missing (the header row has: \"a***@x.com\", \"Ann\", b***@bücher.example)"
        );
        assert_eq!(mask_addresses("no address here"), "no address here");
        assert_eq!(mask_addresses("@ alone, and x@"), "***@ alone, and x***@");
    }

    #[test]
    fn masked_addresses_keep_only_the_first_character_and_the_domain() {
        assert_eq!(masked("ann.lee@example.com"), "a***@example.com");
        assert_eq!(masked("josé@bücher.example"), "j***@bücher.example");
        assert_eq!(masked("nope"), "***");
    }
}
