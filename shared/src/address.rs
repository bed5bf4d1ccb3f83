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

/// Why a domain looks like another: its account and invitation would belong to whoever holds it,
/// while every screen shows the address it imitates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookAlike {
    /// A label mixes scripts past UTS #39's "highly restrictive" level (`exаmple` with a
    /// Cyrillic `а` among Latin letters): the scripts, and the first letter of the fewer.
    Mixed { most: &'static str, other: &'static str, letter: char },
    /// A letter UTS #39 restricts in identifiers (`ԁ`, Cyrillic, drawn as Latin `d`).
    Restricted { letter: char },
    /// A label of one script drawn exactly as a Latin one (`аррӏе`, all Cyrillic, as `apple`),
    /// under an ASCII top-level domain.
    Imitates { label: String, ascii: String },
}

impl std::fmt::Display for LookAlike {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LookAlike::Mixed { most, other, letter } => {
                write!(f, "has a domain that mixes {most} and {other} letters (\"{letter}\" is {other})")
            }
            LookAlike::Restricted { letter } => write!(
                f,
                "has a domain with \"{letter}\" (U+{:04X}), a letter domains may not use to look like another",
                u32::from(*letter)
            ),
            LookAlike::Imitates { label, ascii } => {
                write!(f, "has a domain whose \"{label}\" is written in letters drawn like the Latin \"{ascii}\"")
            }
        }?;
        f.write_str(", as an address made to look like another does; type the address again")
    }
}

/// A domain made to look like another (`LookAlike`), in any spelling (Unicode, punycode,
/// full-width). A label of one script passes, and so do Latin with Han, kana or Hangul (Japanese,
/// Chinese, Korean names) and Latin with one other script but Cyrillic or Greek (UTS #39 levels).
pub fn look_alike(address: &str) -> Option<LookAlike> {
    use unicode_script::{Script, UnicodeScript};
    use unicode_security::{GeneralSecurityProfile, RestrictionLevel, RestrictionLevelDetection};
    let (_, domain) = address.rsplit_once('@')?;
    if domain.is_ascii() && !domain.to_ascii_lowercase().contains("xn--") {
        return None;
    }
    let (unicode, _) = idna::domain_to_unicode(domain);
    let ascii_tld = unicode.rsplit('.').next().is_some_and(|tld| tld.is_ascii());
    for label in unicode.split('.').filter(|l| !l.is_ascii()) {
        let scripts: Vec<(Script, char)> = label
            .chars()
            .map(|c| (c.script(), c))
            .filter(|(s, _)| !matches!(s, Script::Common | Script::Inherited | Script::Unknown))
            .collect();
        let count = |script: Script| scripts.iter().filter(|(s, _)| *s == script).count();
        let most = scripts.iter().map(|(s, _)| *s).max_by_key(|s| count(*s));
        if label.detect_restriction_level() >= RestrictionLevel::MinimallyRestrictive {
            if let Some(most) = most
                && let Some((other, letter)) = scripts.iter().find(|(s, _)| *s != most)
            {
                return Some(LookAlike::Mixed { most: most.full_name(), other: other.full_name(), letter: *letter });
            }
            if let Some(letter) = label.chars().find(|c| !c.identifier_allowed()) {
                return Some(LookAlike::Restricted { letter });
            }
        }
        let ascii: String = unicode_security::skeleton(label).collect();
        if ascii_tld && ascii.is_ascii() {
            return Some(LookAlike::Imitates { label: label.to_string(), ascii });
        }
    }
    None
}

/// An address typed in full-width forms, as a Japanese or Chinese input method writes them
/// (`ａｎｎ＠example.com`, `example．com`): the half-width characters they stand for, when it has any.
pub fn half_width(address: &str) -> Option<String> {
    let mut changed = false;
    let out = address
        .chars()
        .map(|c| match c {
            '\u{FF01}'..='\u{FF5E}' => {
                changed = true;
                char::from_u32(u32::from(c) - 0xFEE0).unwrap_or(c)
            }
            // Ideographic full stops, as IDNA reads them in a domain.
            '\u{3002}' | '\u{FF61}' => {
                changed = true;
                '.'
            }
            _ => c,
        })
        .collect();
    changed.then_some(out)
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

    /// Look-alike domains are found in any spelling (Unicode, punycode, full-width); the real
    /// international domains of Western, Cyrillic, Greek, Japanese and Chinese names pass.
    #[test]
    fn a_domain_made_to_look_like_another_is_a_look_alike() {
        let mixed = |most, other, letter| Some(LookAlike::Mixed { most, other, letter });
        let cyrillic_a = "ceo@ex\u{430}mple.com";
        assert_eq!(look_alike(cyrillic_a), mixed("Latin", "Cyrillic", '\u{430}'));
        let punycode = deliverable(cyrillic_a).unwrap().into_owned();
        assert!(punycode.contains("xn--"), "{punycode}");
        assert_eq!(look_alike(&punycode), mixed("Latin", "Cyrillic", '\u{430}'));
        assert_eq!(look_alike(&punycode.to_uppercase()), mixed("Latin", "Cyrillic", '\u{430}'));
        assert_eq!(
            look_alike("ceo@\u{430}pple.com"),
            mixed("Latin", "Cyrillic", '\u{430}'),
            "the letter of the fewer script, first or not"
        );
        assert_eq!(look_alike("bob@g\u{3bf}\u{3bf}gle.com"), mixed("Latin", "Greek", '\u{3bf}'));
        assert_eq!(look_alike("bob@mail.ex\u{430}mple.com"), mixed("Latin", "Cyrillic", '\u{430}'), "any label");
        // Restricted letters (Cyrillic ԁ, Greek ϲ) drawn as Latin ones.
        assert!(look_alike("ceo@\u{501}ropbox.com").is_some());
        assert!(look_alike("ceo@\u{3f2}itibank.com").is_some());
        // All Cyrillic, drawn as "apple", under .com.
        assert_eq!(
            look_alike("ceo@\u{430}\u{440}\u{440}\u{4cf}\u{435}.com"),
            Some(LookAlike::Imitates { label: "\u{430}\u{440}\u{440}\u{4cf}\u{435}".into(), ascii: "apple".into() })
        );
        for fine in [
            "ann@example.com",
            "ann@bücher.de",
            "ann@münchen-straße.de",
            "ann@почта.рф",
            "ann@пример.com",
            "ann@例え.jp",
            "ann@abc商事.jp",
            "ann@ＡＢＣ商事.jp",
            "ann@한국abc.kr",
            "ann@xn--bcher-kva.de",
            "ann@ελληνικά.gr",
            "ann@mail-2.bücher.de",
            "no-at-sign",
        ] {
            assert_eq!(look_alike(fine), None, "{fine}");
        }
        assert_eq!(
            look_alike(cyrillic_a).unwrap().to_string(),
            "has a domain that mixes Latin and Cyrillic letters (\"\u{430}\" is Cyrillic), as an address made to look like another does; type the address again"
        );
    }

    #[test]
    fn full_width_forms_are_read_as_the_half_width_characters_they_stand_for() {
        assert_eq!(half_width("ａｎｎ＠ｅｘａｍｐｌｅ．ｃｏｍ").as_deref(), Some("ann@example.com"));
        assert_eq!(half_width("ann@example。com").as_deref(), Some("ann@example.com"));
        assert_eq!(half_width("ann@example.com"), None);
        assert_eq!(half_width("zoë@x.com"), None);
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
