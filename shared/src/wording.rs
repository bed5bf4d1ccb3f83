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
/// message outgrows what a cell, an email line or a log line holds.
pub fn quoted(name: &str) -> String {
    bounded(name, 64)
}

/// `text` cut to `max` characters, with an ellipsis when cut.
pub fn bounded(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}
