//! The emails' look: one tenant-branded page (table layout and inline styles only, which Outlook
//! and Gmail render; no images but the tenant's own logo, no scripts), a counts bar built from
//! table cells, and the problems grouped by kind. Pure: text in, HTML and plain text out; every
//! value from a file or a tenant is escaped here.

use crate::finalize::digest::Problem;
use crate::model::Tenant;
use crate::report::esc;

/// The accent colour when a tenant has none.
pub const DEFAULT_COLOUR: &str = "#1a73e8";
/// Kinds of problem an email shows; the Problems sheet (or file) and summary.json have them all.
pub const PROBLEMS_SHOWN: usize = 8;

/// Who the email speaks for.
#[derive(Debug, Clone)]
pub struct Brand {
    pub product: String,
    pub colour: String,
    pub logo: Option<String>,
}

impl Brand {
    pub fn of(tenant: Option<&Tenant>) -> Brand {
        let Some(t) = tenant else { return Brand { product: "rosterdrop".into(), colour: DEFAULT_COLOUR.into(), logo: None } };
        let b = &t.branding;
        Brand {
            product: b.product_name.clone().or_else(|| t.name.clone()).unwrap_or_else(|| t.id.clone()),
            colour: b.colour.clone().filter(|c| is_colour(c)).unwrap_or_else(|| DEFAULT_COLOUR.into()),
            logo: b.logo_url.clone().filter(|u| is_logo_url(u)),
        }
    }
}

/// `#rrggbb`.
pub fn is_colour(c: &str) -> bool {
    c.len() == 7 && c.starts_with('#') && c[1..].chars().all(|x| x.is_ascii_hexdigit())
}

/// An https URL without anything that could leave an HTML attribute or a CSS value.
pub fn is_logo_url(u: &str) -> bool {
    u.starts_with("https://")
        && u.len() <= 2048
        && u.chars().all(|c| c.is_ascii_graphic() && !matches!(c, '"' | '\'' | '<' | '>' | '\\' | '(' | ')'))
}

/// 1234567 -> "1,234,567".
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// "1 row" / "12 rows".
pub fn rows(n: u64) -> String {
    if n == 1 { "1 row".into() } else { format!("{} rows", thousands(n)) }
}

/// The whole message: a brand bar (logo or product name), the headline, the body, a footer.
/// `preheader`: the line mail clients show beside the subject.
pub fn page(brand: &Brand, preheader: &str, headline: &str, body: &str, footer: &str) -> String {
    let colour = &brand.colour;
    let mark = match &brand.logo {
        Some(url) => {
            format!("<img src=\"{}\" alt=\"{}\" height=\"32\" style=\"display:block;border:0;height:32px\">", esc(url), esc(&brand.product))
        }
        None => format!("<span style=\"color:#ffffff;font-size:18px;font-weight:bold\">{}</span>", esc(&brand.product)),
    };
    format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>{title}</title></head>\
<body style=\"margin:0;padding:0;background:#f3f4f6;font-family:Segoe UI,Helvetica,Arial,sans-serif;color:#1f2937\">\
<div style=\"display:none;max-height:0;overflow:hidden\">{pre}</div>\
<table role=\"presentation\" width=\"100%\" cellpadding=\"0\" cellspacing=\"0\" style=\"background:#f3f4f6\"><tr><td align=\"center\" style=\"padding:24px 12px\">\
<table role=\"presentation\" width=\"600\" cellpadding=\"0\" cellspacing=\"0\" style=\"max-width:600px;width:100%;background:#ffffff;border-radius:6px;border:1px solid #e5e7eb\">\
<tr><td style=\"background:{colour};padding:14px 24px;border-radius:6px 6px 0 0\">{mark}</td></tr>\
<tr><td style=\"padding:24px 24px 8px 24px\"><h1 style=\"margin:0 0 12px 0;font-size:22px;line-height:28px;color:#111827\">{headline}</h1>{body}</td></tr>\
<tr><td style=\"padding:16px 24px 24px 24px;border-top:1px solid #e5e7eb;color:#6b7280;font-size:12px;line-height:18px\">{footer}</td></tr>\
</table></td></tr></table></body></html>",
        title = esc(headline),
        pre = esc(preheader),
        headline = esc(headline),
    )
}

/// A message that is text first (held, scheduled, decisions): its paragraphs on the branded
/// page, the subject's words after the tenant as the headline.
pub fn text_page(tenant: &Tenant, subject: &str, text: &str) -> String {
    let headline = subject.split_once(": ").map_or(subject, |(_, rest)| rest);
    let body: String =
        text.split("\n\n").filter(|p| !p.trim().is_empty()).map(|p| para(&esc(p.trim_end()).replace('\n', "<br>"))).collect();
    page(&Brand::of(Some(tenant)), headline, headline, &body, &format!("Sent by rosterdrop for {}.", esc(&tenant.id)))
}

/// A paragraph of escaped text (`**…**` is not markup: callers pass HTML where they mean it).
pub fn para(html: &str) -> String {
    format!("<p style=\"margin:0 0 12px 0;font-size:14px;line-height:21px\">{html}</p>")
}

/// A section title.
pub fn section(title: &str) -> String {
    format!("<h2 style=\"margin:20px 0 8px 0;font-size:16px;line-height:22px;color:#111827\">{}</h2>", esc(title))
}

/// One part of the counts bar.
pub struct Segment<'a> {
    pub label: &'a str,
    pub count: u64,
    pub colour: &'a str,
}

pub const GREEN: &str = "#2e7d32";
pub const GREY: &str = "#9ca3af";
pub const RED: &str = "#c62828";
pub const AMBER: &str = "#f9a825";

/// The counts as one bar of table cells, each as wide as its share (at least 1% when not zero),
/// with a legend under it. Renders without images or CSS support beyond cell widths and colours.
pub fn bar(segments: &[Segment<'_>]) -> String {
    let total: u64 = segments.iter().map(|s| s.count).sum();
    if total == 0 {
        return String::new();
    }
    let shown: Vec<&Segment<'_>> = segments.iter().filter(|s| s.count > 0).collect();
    let mut widths: Vec<u64> = shown.iter().map(|s| (s.count * 100 / total).max(1)).collect();
    // The widths add up to 100: the largest part takes what rounding left over (or gave too much).
    let sum: u64 = widths.iter().sum();
    if let Some((i, _)) = widths.iter().enumerate().max_by_key(|(_, w)| **w) {
        widths[i] = (widths[i] + 100).saturating_sub(sum).max(1);
    }
    let mut cells = String::new();
    for (s, w) in shown.iter().zip(&widths) {
        cells +=
            &format!("<td width=\"{w}%\" style=\"width:{w}%;background:{};height:14px;font-size:0;line-height:0\">&nbsp;</td>", s.colour);
    }
    let legend: Vec<String> = shown
        .iter()
        .map(|s| {
            format!("<span style=\"color:{};font-size:14px\">&#9632;</span>&nbsp;{}&nbsp;{}", s.colour, thousands(s.count), esc(s.label))
        })
        .collect();
    format!(
        "<table role=\"presentation\" width=\"100%\" cellpadding=\"0\" cellspacing=\"0\" style=\"border-collapse:collapse;margin:4px 0 6px 0\"><tr>{cells}</tr></table>\
<p style=\"margin:0 0 16px 0;font-size:13px;line-height:20px;color:#374151\">{}</p>",
        legend.join(" &nbsp; ")
    )
}

/// The bar's counts as text: "944 applied · 56 need fixing".
pub fn bar_text(segments: &[Segment<'_>]) -> String {
    segments.iter().filter(|s| s.count > 0).map(|s| format!("{} {}", thousands(s.count), s.label)).collect::<Vec<_>>().join(" · ")
}

/// "rows 9, 98, 131 and 9 more".
pub fn where_text(p: &Problem) -> String {
    // "row 9, row 98" reads better as "rows 9, 98" (rows of several sheets keep their sheet).
    let numbers: Option<Vec<&str>> =
        p.rows.iter().map(|r| r.strip_prefix("row ").filter(|n| n.chars().all(|c| c.is_ascii_digit()))).collect();
    let mut w = match numbers {
        Some(n) if n.len() == 1 && p.more_rows == 0 => format!("row {}", n[0]),
        Some(n) => format!("rows {}", n.join(", ")),
        None => p.rows.join(", "),
    };
    if p.more_rows > 0 {
        w += &format!(" and {} more", thousands(p.more_rows.into()));
    }
    w
}

/// The problems, most frequent first: "12 rows: <message> - rows 9, 98, 131 and 9 more".
pub fn problems_text(problems: &[Problem], other_rows: u32) -> String {
    let mut out = String::new();
    for p in problems.iter().take(PROBLEMS_SHOWN) {
        out += &format!(
            "  {}: {}{} - {}\n",
            rows(p.count.into()),
            p.message,
            if p.varied { " (and the same with other values)" } else { "" },
            where_text(p)
        );
    }
    let rest: u64 = problems.iter().skip(PROBLEMS_SHOWN).map(|p| u64::from(p.count)).sum::<u64>() + u64::from(other_rows);
    if rest > 0 {
        let kinds = problems.len().saturating_sub(PROBLEMS_SHOWN);
        out += &format!("  and {} with {} other kinds of problem (all of them in the Problems sheet or file)\n", rows(rest), kinds.max(1));
    }
    out
}

pub fn problems_html(problems: &[Problem], other_rows: u32) -> String {
    let mut out =
        String::from("<table role=\"presentation\" width=\"100%\" cellpadding=\"0\" cellspacing=\"0\" style=\"border-collapse:collapse\">");
    for p in problems.iter().take(PROBLEMS_SHOWN) {
        out += &format!(
            "<tr><td valign=\"top\" style=\"padding:8px 12px 8px 0;border-top:1px solid #e5e7eb;white-space:nowrap;font-size:14px;font-weight:bold;color:{RED}\">{}</td>\
<td style=\"padding:8px 0;border-top:1px solid #e5e7eb;font-size:14px;line-height:20px\">{}{}<br><span style=\"color:#6b7280;font-size:13px\">{}</span></td></tr>",
            esc(&rows(p.count.into())),
            esc(&p.message) + if p.varied { " <span style=\"color:#6b7280\">(and the same with other values)</span>" } else { "" },
            p.column.as_deref().map(|c| format!(" <span style=\"color:#6b7280\">(column {})</span>", esc(c))).unwrap_or_default(),
            esc(&where_text(p)),
        );
    }
    out += "</table>";
    let rest: u64 = problems.iter().skip(PROBLEMS_SHOWN).map(|p| u64::from(p.count)).sum::<u64>() + u64::from(other_rows);
    if rest > 0 {
        let kinds = problems.len().saturating_sub(PROBLEMS_SHOWN).max(1);
        out +=
            &para(&format!("And {} with {kinds} other kinds of problem: the Problems sheet (or file) lists them all.", esc(&rows(rest))));
    }
    out
}

/// A small two-column table of label and value.
pub fn facts(rows: &[(&str, String)]) -> String {
    let mut out = String::from(
        "<table role=\"presentation\" cellpadding=\"0\" cellspacing=\"0\" style=\"border-collapse:collapse;margin:0 0 12px 0\">",
    );
    for (label, value) in rows {
        out += &format!(
            "<tr><td style=\"padding:2px 16px 2px 0;font-size:13px;color:#6b7280\">{}</td><td style=\"padding:2px 0;font-size:13px\">{}</td></tr>",
            esc(label),
            value
        );
    }
    out + "</table>"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(message: &str, count: u32, rows: &[&str], more: u32) -> Problem {
        Problem {
            message: message.into(),
            column: None,
            count,
            rows: rows.iter().map(|r| r.to_string()).collect(),
            more_rows: more,
            varied: false,
        }
    }

    #[test]
    fn numbers_read_with_separators_and_rows_with_and_n_more() {
        assert_eq!(
            (thousands(0), thousands(999), thousands(1000), thousands(1_234_567)),
            ("0".into(), "999".into(), "1,000".into(), "1,234,567".into())
        );
        let p = problem("unknown role \"learner\"", 12, &["row 9", "row 98", "row 131"], 9);
        assert_eq!(where_text(&p), "rows 9, 98, 131 and 9 more");
        assert_eq!(where_text(&problem("x", 1, &["row 4"], 0)), "row 4");
        assert_eq!(
            where_text(&problem("x", 2, &["row 3 of sheet Staff", "row 9 of sheet Students"], 0)),
            "row 3 of sheet Staff, row 9 of sheet Students"
        );
        assert_eq!(problems_text(&[p], 0), "  12 rows: unknown role \"learner\" - rows 9, 98, 131 and 9 more\n");
    }

    /// Whatever the counts, the bar's cells add up to 100% and a part that is not zero shows.
    #[test]
    fn the_bar_adds_up_to_a_hundred_percent_and_never_hides_a_part() {
        for counts in [[1u64, 0, 0], [999_999, 1, 0], [1, 1, 1], [3, 3, 3], [0, 0, 7], [50, 49, 1]] {
            let segs: Vec<Segment<'_>> =
                counts.iter().zip([GREEN, RED, GREY]).map(|(c, colour)| Segment { label: "x", count: *c, colour }).collect();
            let html = bar(&segs);
            let widths: Vec<u64> = html.split("<td width=\"").skip(1).filter_map(|s| s.split('%').next()?.parse().ok()).collect();
            assert_eq!(widths.iter().sum::<u64>(), 100, "{counts:?}: {widths:?}");
            assert_eq!(widths.len(), counts.iter().filter(|c| **c > 0).count());
            assert!(widths.iter().all(|w| *w >= 1));
        }
        assert_eq!(bar(&[Segment { label: "x", count: 0, colour: GREEN }]), "");
    }

    /// Everything from a file or a tenant is escaped; a logo URL that could break out of its
    /// attribute is not used; an unusable colour falls back.
    #[test]
    fn hostile_values_are_escaped_and_hostile_branding_is_ignored() {
        let mut t = Tenant::new("acme", vec!["a@acme.example.com".into()]);
        t.branding.product_name = Some("<script>alert(1)</script>".into());
        t.branding.colour = Some("red;background:url(x)".into());
        t.branding.logo_url = Some("https://x.example/\" onerror=\"alert(1)".into());
        let brand = Brand::of(Some(&t));
        assert_eq!((brand.colour.as_str(), brand.logo.is_none()), (DEFAULT_COLOUR, true));
        let html = page(&brand, "<b>pre</b>", "<i>head</i>", "", "");
        assert!(!html.contains("<script>") && !html.contains("<i>head") && !html.contains("<b>pre"), "{html}");
        let p = problem("<img src=x onerror=alert(1)>", 1, &["row 2"], 0);
        assert!(!problems_html(&[p], 0).contains("<img"));
        assert!(
            is_logo_url("https://cdn.acme.example/logo.png") && !is_logo_url("http://x/logo.png") && !is_logo_url("javascript:alert(1)")
        );
    }
}
