//! How messages quote what users sent: bounded, so no message outgrows what a cell, an email
//! line or a log line holds, and counts written out exactly.

/// 1234567 -> "1,234,567": exact counts in messages (rounded ones said "1.0 million, more than 1.0 million").
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// An email's line for a file too large to attach: its link, and the way to it once the link has
/// expired. A link is signed by the function's role, so on AWS it stops working when that role's
/// session ends, which can be hours before the configured time.
pub fn link_line(name: &str, url: &str, job: &str) -> String {
    format!(
        "\n{name} is too large to attach; download it (link valid for a limited time):\n{url}\n\
         Once the link has expired: rosterdrop results {job} (or ask support for job {job}).\n"
    )
}

/// A name from the file as quoted in a message: at most 64 characters, then an ellipsis, so no
/// message outgrows what a cell, an email line or a log line holds. Characters that show as
/// nothing (a zero-width space pasted from a web page, a direction mark, a byte-order mark, a
/// control character) are written out as `<U+200B>`: `Email "ann@x.com" is not a valid email
/// address` said nothing of what to fix. A double quote in the name is written `\"`, so the
/// quotes around it still say where it ends (and the email's grouping of messages by kind,
/// `digest::kind_of`, finds it: each role `"x" & y` made a kind of its own).
pub fn quoted(name: &str) -> String {
    let cut = bounded(name, 64);
    if !cut.chars().any(|c| invisible(c) || c == '"' || c == '\\') {
        return cut;
    }
    let mut out = String::with_capacity(cut.len() + 16);
    for c in cut.chars() {
        if invisible(c) {
            out += &format!("<U+{:04X}>", u32::from(c));
        } else if c == '"' || c == '\\' {
            // A backslash too (`HR\` would read `"HR\"`, its closing quote escaped).
            out.push('\\');
            out.push(c);
        } else {
            out.push(c);
        }
    }
    out
}

/// A dropped file's name as emails, subjects and messages show it: characters that show as
/// nothing, control characters (line breaks and tabs too: a name is one line) and direction
/// overrides written out as `<U+202E>` (a name with U+202E showed `report<U+202E>vsc.exe` as
/// `reportexe.csv` and turned the subject's counts around; one with a line break put a
/// `Bcc:`-looking line into the text part), and a name over 120 characters cut in its middle,
/// its end (the extension) kept: a 900-character name pushed the subject's counts out of sight.
pub fn file_label(name: &str) -> String {
    const MAX: usize = 120;
    let count = name.chars().count();
    let label = if count <= MAX {
        written_out(name, hidden_in_name).into_owned()
    } else {
        let (head, tail) = (MAX * 2 / 3, MAX - MAX * 2 / 3 - 1);
        let (start, end): (String, String) = (name.chars().take(head).collect(), name.chars().skip(count - tail).collect());
        format!("{}…{}", written_out(&start, hidden_in_name), written_out(&end, hidden_in_name))
    };
    // Each hidden character is written as 8: 110 of them made a 900-character subject. Cut
    // again, keeping the end, when that is what grew it.
    let shown = label.chars().count();
    if shown <= MAX * 3 / 2 {
        return label;
    }
    let tail: String = label.chars().skip(shown - MAX / 3).collect();
    format!("{}…{tail}", label.chars().take(MAX - MAX / 3 - 1).collect::<String>())
}

/// `text` with each character `hidden` picks written out as `<U+202E>`; borrowed when it has none.
pub fn written_out(text: &str, hidden: impl Fn(char) -> bool) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(&hidden) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if hidden(c) {
            out += &format!("<U+{:04X}>", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out.into()
}

/// A file name's characters as a file we name after it may hold them: none `hidden_in_name`,
/// no path or quote characters, no leading dots or spaces (`.csv` made `.csv-result.csv`, a
/// hidden file once saved; a direction override showed `x<U+202E>exe-result.csv` as ending in
/// "-exe").
pub fn name_chars(name: &str) -> impl Iterator<Item = char> + '_ {
    name.chars().filter(|c| !hidden_in_name(*c) && !matches!(c, '/' | '\\' | '"')).skip_while(|c| *c == '.' || c.is_whitespace())
}

/// A character of a file name that shows as nothing or moves the text around it: a control
/// character, a direction mark, override or isolate, a zero-width space or word joiner, a
/// byte-order mark, a soft hyphen. Joiners (U+200C, U+200D) are kept: emoji and several scripts
/// are written with them.
pub fn hidden_in_name(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{061C}'
                | '\u{200B}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{2069}'
                | '\u{FEFF}'
        )
}

/// A character that shows as nothing (line breaks and tabs excepted: they show as space), or as
/// a space that is not one: `unknown role "Staff Member"; did you mean "Staff Member"?` hid a
/// no-break space pasted from a web page.
pub fn invisible(c: char) -> bool {
    shows_as_nothing(c) || matches!(c, '\u{00A0}' | '\u{2000}'..='\u{200A}' | '\u{202F}' | '\u{205F}' | '\u{3000}')
}

/// A character that shows as nothing at all: a zero-width space, a direction mark, a byte-order
/// mark, a soft hyphen, a control character (line breaks and tabs excepted).
pub fn shows_as_nothing(c: char) -> bool {
    matches!(c, '\u{00AD}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
        || (c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
}

/// `text` cut to `max` characters, with an ellipsis when cut.
pub fn bounded(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invisible_characters_are_written_out_in_quotes() {
        assert_eq!(quoted("ann@x.com\u{200B}"), "ann@x.com<U+200B>");
        assert_eq!(quoted("\u{FEFF}Email"), "<U+FEFF>Email");
        assert_eq!(quoted("a\u{0007}b"), "a<U+0007>b");
        assert_eq!(quoted("Staff\u{00A0}Member"), "Staff<U+00A0>Member", "a space that is not one");
        assert_eq!(quoted("Zoë, line\ttab"), "Zoë, line\ttab", "visible text as it is");
        assert_eq!(quoted(&"x".repeat(70)).chars().count(), 65, "still bounded");
        assert_eq!(quoted("\"Bob\" & 'Al'"), "\\\"Bob\\\" & 'Al'", "a quote inside written so it does not end the quote");
        assert_eq!(quoted("HR\\"), "HR\\\\", "a backslash too, so the closing quote is not taken for one inside");
        // A name of hidden characters stays a subject's length once written out.
        let label = file_label(&format!("{}.csv", "\u{202E}".repeat(110)));
        assert!(label.chars().count() <= 180 && label.ends_with(".csv") && !label.contains('\u{202E}'), "{label}");
        assert_eq!(file_label("a\u{2028}b.csv"), "a<U+2028>b.csv");
    }
}
