//! A number as a spreadsheet shows it under its cell's number format: `000123` for 123 under
//! `000000`, `12.5%` for 0.125 under `0.0%`, `(415) 555-0100` under `(000) 000-0000`. That is
//! the text the user typed and sees, and what the spreadsheet's own "save as CSV" writes.
//!
//! Only formats shown exactly are rendered: digit placeholders (`0`, `#`), a decimal point,
//! thousands separators, percent, colours, quoted and escaped literals, locale and currency tags
//! (`[$-409]`, `[$€-407]`), padding and fill (`_)`, `*-`, shown as nothing: they only align),
//! conditions on non-negative values (`[>=100000]0;000000`), a text section (`000000;@`), and up
//! to three number sections (positive; negative; zero). Anything else (fractions, exponents,
//! scaling, a section that hides the value) is `None`, and the caller keeps its plain rendering of
//! the value. Knows nothing about rosters.

/// The most digit placeholders and literal characters a rendered format may have: the output of
/// one cell stays within a few hundred bytes whatever the workbook declares.
const MAX_PLACEHOLDERS: usize = 64;
const MAX_LITERAL_CHARS: usize = 256;
/// At most this many `%` (each multiplies by 100).
const MAX_PERCENT: usize = 2;

/// A format code understood once (a workbook has a few dozen styles and thousands of cells).
#[derive(Debug, Clone, PartialEq)]
pub struct NumberFormat {
    /// Positive (and the rest, when alone); negative, shown without its sign; zero.
    sections: Vec<Section>,
}

#[derive(Debug, Clone, PartialEq)]
struct Section {
    prefix: String,
    /// Integer placeholders and the literals between them, left to right.
    int: Vec<Tok>,
    grouped: bool,
    point: bool,
    /// Decimal placeholders: `true` for `0` (always shown), `false` for `#`.
    decimals: Vec<bool>,
    suffix: String,
    /// Powers of 100 the value is multiplied by (`%` signs).
    percent: usize,
    /// `[>=100000]`: the values this section is for.
    cond: Option<Cond>,
}

/// A section's condition: a comparison with a number.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Cond {
    op: CondOp,
    than: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum CondOp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl Cond {
    fn parse(tag: &str) -> Option<Self> {
        let (op, rest) =
            [("<=", CondOp::Le), (">=", CondOp::Ge), ("<>", CondOp::Ne), ("<", CondOp::Lt), (">", CondOp::Gt), ("=", CondOp::Eq)]
                .into_iter()
                .find_map(|(p, op)| tag.strip_prefix(p).map(|rest| (op, rest)))?;
        let than: f64 = rest.trim().parse().ok().filter(|t: &f64| t.is_finite())?;
        Some(Cond { op, than })
    }

    fn holds(&self, v: f64) -> bool {
        match self.op {
            CondOp::Lt => v < self.than,
            CondOp::Le => v <= self.than,
            CondOp::Gt => v > self.than,
            CondOp::Ge => v >= self.than,
            CondOp::Eq => v == self.than,
            CondOp::Ne => v != self.than,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Digit { zero: bool },
    Lit(String),
}

/// What the section lexer reads.
#[derive(Debug, Clone, PartialEq)]
enum Lex {
    Digit { zero: bool },
    Point,
    Comma,
    Percent,
    Lit(String),
    Cond(Cond),
}

impl NumberFormat {
    /// `None` for a format not shown exactly (see the module).
    pub fn parse(code: &str) -> Option<Self> {
        let mut sections = split_sections(code)?;
        // A last section with `@` is for text: a number never takes it (`000000;@`).
        if sections.len() > 1 && sections.last().is_some_and(|t| unquoted(t).contains('@')) {
            sections.pop();
        }
        if sections.is_empty() || sections.len() > 3 {
            return None;
        }
        let sections = sections.into_iter().map(|s| section(&s)).collect::<Option<Vec<_>>>()?;
        Some(Self { sections })
    }

    /// `value` as the format shows it; `None` if this value is not shown exactly (not finite, or
    /// shown without any digit).
    pub fn render(&self, value: f64) -> Option<String> {
        // Digits a spreadsheet cut are not shown as if typed: the plain value says so.
        if !value.is_finite() || !super::workbook::digits_kept(value) {
            return None;
        }
        if self.sections.iter().any(|s| s.cond.is_some()) {
            return self.render_conditional(value);
        }
        let (section, sign) = match self.sections.as_slice() {
            [one] => (one, value < 0.0),
            // A negative section with no literal (`0;0`) would show -5 as 5: the sign is kept.
            [_, negative, ..] if value < 0.0 && negative.has_literal() => (negative, false),
            [_, _, ..] if value < 0.0 => return None,
            [_, _, zero] if value == 0.0 => (zero, false),
            [positive, ..] => (positive, false),
            [] => return None,
        };
        section.render(value.abs(), sign)
    }
}

impl NumberFormat {
    /// Sections chosen by their conditions, in order; the last without one takes the rest. Only
    /// non-negative values: how Excel signs a negative one under conditions is left to the caller.
    fn render_conditional(&self, value: f64) -> Option<String> {
        // Conditions lead (`[>=100000]0;000000`); a plain section before a conditional one is
        // read otherwise by different programs.
        let plain = self.sections.iter().position(|s| s.cond.is_none()).unwrap_or(self.sections.len());
        if value < 0.0 || self.sections[plain..].iter().any(|s| s.cond.is_some()) {
            return None;
        }
        let section = self.sections.iter().find(|s| s.cond.is_none_or(|c| c.holds(value)))?;
        section.render(value, false)
    }
}

/// A section's text outside quotes and escapes (`"@home"0` has no text placeholder).
fn unquoted(section: &str) -> String {
    let (mut out, mut quoted, mut escaped) = (String::new(), false, false);
    for c in section.chars() {
        match (c, quoted, escaped) {
            (_, _, true) => escaped = false,
            ('"', _, false) => quoted = !quoted,
            ('\\', false, false) => escaped = true,
            (c, false, false) => out.push(c),
            _ => {}
        }
    }
    out
}

impl Section {
    fn has_literal(&self) -> bool {
        !self.prefix.is_empty() || !self.suffix.is_empty() || self.int.iter().any(|t| matches!(t, Tok::Lit(_)))
    }

    fn render(&self, abs: f64, sign: bool) -> Option<String> {
        let mut d = Decimal::of(abs)?;
        d.shift(2 * self.percent);
        d.round(self.decimals.len());
        let (int_digits, frac) = d.parts(self.decimals.len());
        let mut out = String::with_capacity(self.prefix.len() + self.suffix.len() + int_digits.len() + 2 * MAX_PLACEHOLDERS);
        if sign {
            out.push('-');
        }
        out.push_str(&self.prefix);
        let int = if self.grouped { self.grouped_int(&int_digits) } else { self.placed_int(&int_digits) };
        out.push_str(&int);
        if self.point {
            out.push('.');
        }
        // Decimals: trailing zeros under `#` are dropped; `0` keeps them.
        let keep = self.decimals.iter().rposition(|&zero| zero).map_or(0, |i| i + 1);
        let shown = frac.trim_end_matches('0').len().max(keep);
        out.push_str(&frac[..shown]);
        out.push_str(&self.suffix);
        // A value shown without a digit (0 under `#`) would arrive as a blank cell: keep it.
        out.chars().any(|c| c.is_ascii_digit()).then_some(out)
    }

    /// Digits filled into the placeholders right to left; the leftmost placeholder takes any
    /// digits left over (123456 under `000-000` is `123-456`, under `00-00` `1234-56`).
    fn placed_int(&self, digits: &str) -> String {
        // `.00` has no integer placeholder: the integer digits are still shown (5.25 is `5.25`).
        let Some(first) = self.int.iter().position(|t| matches!(t, Tok::Digit { .. })) else { return digits.to_string() };
        // Pieces borrowed from the digits and the format, right to left: one allocation a cell
        // (a phone format has a dozen tokens; a String each made this the reader's costliest step).
        let mut left = digits.len();
        let mut rev: Vec<&str> = Vec::with_capacity(self.int.len());
        for (k, tok) in self.int.iter().enumerate().rev() {
            match tok {
                Tok::Lit(s) => rev.push(s),
                Tok::Digit { zero } if k == first => {
                    if left > 0 {
                        rev.push(&digits[..left]);
                        left = 0;
                    } else if *zero {
                        rev.push("0");
                    }
                }
                Tok::Digit { zero } => {
                    if left > 0 {
                        left -= 1;
                        rev.push(&digits[left..left + 1]);
                    } else if *zero {
                        rev.push("0");
                    }
                }
            }
        }
        let mut out = String::with_capacity(rev.iter().map(|p| p.len()).sum());
        rev.iter().rev().for_each(|p| out.push_str(p));
        out
    }

    /// `#,##0`: the digits padded to the `0` placeholders, in groups of three.
    fn grouped_int(&self, digits: &str) -> String {
        let zeros = self.int.iter().filter(|t| matches!(t, Tok::Digit { zero: true })).count();
        let padded = format!("{digits:0>zeros$}");
        let mut out = String::with_capacity(padded.len() + padded.len() / 3);
        for (i, c) in padded.chars().enumerate() {
            if i > 0 && (padded.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        out
    }
}

/// The code's sections, split at `;` outside quotes, escapes and brackets.
fn split_sections(code: &str) -> Option<Vec<String>> {
    let (mut sections, mut cur) = (Vec::new(), String::new());
    let mut chars = code.chars();
    while let Some(c) = chars.next() {
        match c {
            ';' => sections.push(std::mem::take(&mut cur)),
            '"' => {
                cur.push(c);
                loop {
                    let q = chars.next()?;
                    cur.push(q);
                    if q == '"' {
                        break;
                    }
                }
            }
            '\\' | '[' => {
                cur.push(c);
                let close = if c == '[' { ']' } else { '\0' };
                loop {
                    let q = chars.next()?;
                    cur.push(q);
                    if c == '\\' || q == close {
                        break;
                    }
                }
            }
            _ => cur.push(c),
        }
    }
    sections.push(cur);
    Some(sections)
}

fn section(s: &str) -> Option<Section> {
    let mut lexed = lex(s)?;
    // One condition, anywhere a tag may stand (`[Red][<0]` or `[<0][Red]`).
    let conds: Vec<Cond> = lexed.iter().filter_map(|l| if let Lex::Cond(c) = l { Some(*c) } else { None }).collect();
    if conds.len() > 1 {
        return None;
    }
    lexed.retain(|l| !matches!(l, Lex::Cond(_)));
    let is_number = |l: &Lex| matches!(l, Lex::Digit { .. } | Lex::Point);
    let first = lexed.iter().position(is_number)?;
    let last = lexed.iter().rposition(is_number)?;
    let (mut prefix, mut suffix, mut percent) = (String::new(), String::new(), 0usize);
    for (out, part) in [(&mut prefix, &lexed[..first]), (&mut suffix, &lexed[last + 1..])] {
        for l in part {
            match l {
                Lex::Lit(t) => out.push_str(t),
                Lex::Percent if percent < MAX_PERCENT => {
                    out.push('%');
                    percent += 1;
                }
                // A comma after the digits scales by 1,000; before them it is not Excel's.
                Lex::Percent | Lex::Comma | Lex::Digit { .. } | Lex::Point | Lex::Cond(_) => return None,
            }
        }
    }
    let middle = &lexed[first..=last];
    let point_at = middle.iter().position(|l| *l == Lex::Point);
    let (int_part, dec_part) = match point_at {
        Some(p) => (&middle[..p], &middle[p + 1..]),
        None => (middle, &[][..]),
    };
    let mut decimals = Vec::new();
    for l in dec_part {
        match l {
            Lex::Digit { zero } => decimals.push(*zero),
            _ => return None,
        }
    }
    let (mut int, mut grouped) = (Vec::new(), false);
    for l in int_part {
        match l {
            Lex::Digit { zero } => int.push(Tok::Digit { zero: *zero }),
            Lex::Lit(t) => int.push(Tok::Lit(t.clone())),
            Lex::Comma => grouped = true,
            Lex::Percent if percent < MAX_PERCENT => {
                int.push(Tok::Lit("%".into()));
                percent += 1;
            }
            Lex::Percent | Lex::Point | Lex::Cond(_) => return None,
        }
    }
    let placeholders = int.iter().filter(|t| matches!(t, Tok::Digit { .. })).count() + decimals.len();
    let literal = prefix.chars().count()
        + suffix.chars().count()
        + int.iter().map(|t| if let Tok::Lit(s) = t { s.chars().count() } else { 0 }).sum::<usize>();
    // Grouping with literals among the digits, or a comma that ends the integer part (scaling).
    let comma_last =
        int_part.iter().rposition(|l| *l == Lex::Comma).is_some_and(|c| !int_part[c..].iter().any(|l| matches!(l, Lex::Digit { .. })));
    // A `.` or `,` literal among the digits (`0"."00` shows 1234 as 12.34) reads as a decimal
    // mark: the text would say another number, so the value reads plain.
    let marks = int.iter().any(|t| matches!(t, Tok::Lit(l) if l.contains(['.', ','])));
    if (grouped && (comma_last || int.iter().any(|t| matches!(t, Tok::Lit(_)))))
        || marks
        || placeholders > MAX_PLACEHOLDERS
        || literal > MAX_LITERAL_CHARS
        || percent > MAX_PERCENT
    {
        return None;
    }
    Some(Section { prefix, int, grouped, point: point_at.is_some(), decimals, suffix, percent, cond: conds.first().copied() })
}

/// One section's characters; `None` at anything not shown exactly.
fn lex(s: &str) -> Option<Vec<Lex>> {
    let mut out = Vec::new();
    let lit = |out: &mut Vec<Lex>, t: String| match out.last_mut() {
        Some(Lex::Lit(prev)) => prev.push_str(&t),
        _ => out.push(Lex::Lit(t)),
    };
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '0' => out.push(Lex::Digit { zero: true }),
            '#' => out.push(Lex::Digit { zero: false }),
            '.' => out.push(Lex::Point),
            ',' => out.push(Lex::Comma),
            '%' => out.push(Lex::Percent),
            '"' => {
                let mut t = String::new();
                loop {
                    match chars.next()? {
                        '"' => break,
                        q => t.push(q),
                    }
                }
                lit(&mut out, t);
            }
            '\\' => lit(&mut out, chars.next()?.to_string()),
            '[' => {
                let tag: String = chars.by_ref().take_while(|&q| q != ']').collect();
                // Colours only change how it looks; a locale (`[$-409]`) how dates and names are
                // spelled; a currency tag (`[$€-407]`) shows its symbol. Elapsed time does not
                // render here.
                let colour = ["black", "blue", "cyan", "green", "magenta", "red", "white", "yellow"];
                let lower = tag.to_ascii_lowercase();
                if let Some(currency) = tag.strip_prefix('$') {
                    let (symbol, locale) = currency.split_once('-').unwrap_or((currency, ""));
                    // A long hex locale (`[$-D00041E]`) also picks the digits shown (Thai,
                    // Arabic-Indic): not rendered here. A language tag (`en-US`) or LCID is not.
                    let hex = !locale.is_empty() && locale.bytes().all(|b| b.is_ascii_hexdigit());
                    if hex && locale.len() > 4 {
                        return None;
                    }
                    if !symbol.is_empty() {
                        lit(&mut out, symbol.to_string());
                    }
                } else if let Some(cond) = Cond::parse(&tag) {
                    out.push(Lex::Cond(cond));
                } else if !(colour.contains(&lower.as_str()) || lower.strip_prefix("color").is_some_and(|n| n.parse::<u8>().is_ok())) {
                    return None;
                }
            }
            // Characters Excel shows as they are without quotes.
            '$' | '-' | '+' | '(' | ')' | ':' | '!' | '^' | '&' | '\'' | '~' | '{' | '}' | '<' | '>' | '=' | ' ' => {
                lit(&mut out, c.to_string())
            }
            // Padding the width of the next character, or that character repeated to fill the
            // cell: alignment only, nothing a reader types.
            '_' | '*' => {
                chars.next()?;
            }
            // `?` and `/` (fractions, aligned digits), `E` (exponents), `@` (text), letters
            // (General, dates): not rendered here.
            _ => return None,
        }
    }
    Some(out)
}

/// A non-negative number as decimal digits: `digits[..int_len]` before the point.
struct Decimal {
    digits: Vec<u8>,
    int_len: usize,
}

impl Decimal {
    /// Rust's shortest round-trip text. Excel shows only 15 significant digits (1234567890123456
    /// as 1234567890123460), but a 16-digit id a script wrote is kept whole, as the plain reading
    /// keeps it.
    fn of(abs: f64) -> Option<Self> {
        let text = format!("{abs}");
        let (int, frac) = text.split_once('.').unwrap_or((&text, ""));
        let mut digits: Vec<u8> = int.bytes().chain(frac.bytes()).map(|b| b.wrapping_sub(b'0')).collect();
        if digits.iter().any(|&d| d > 9) {
            return None;
        }
        let mut int_len = int.len();
        let leading = digits[..int_len].iter().take_while(|&&d| d == 0).count();
        digits.drain(..leading);
        int_len -= leading;
        Some(Self { digits, int_len })
    }

    /// Times 100 per `%`: the point moves right.
    fn shift(&mut self, places: usize) {
        self.int_len += places;
        if self.digits.len() < self.int_len {
            self.digits.resize(self.int_len, 0);
        }
        let leading = self.digits[..self.int_len].iter().take_while(|&&d| d == 0).count();
        self.digits.drain(..leading);
        self.int_len -= leading;
    }

    /// To `places` decimals, half away from zero (as Excel shows it).
    fn round(&mut self, places: usize) {
        self.round_at(self.int_len + places);
    }

    fn round_at(&mut self, keep: usize) {
        if self.digits.len() <= keep {
            return;
        }
        let up = self.digits[keep] >= 5;
        self.digits.truncate(keep);
        if !up {
            return;
        }
        for d in self.digits.iter_mut().rev() {
            if *d == 9 {
                *d = 0;
            } else {
                *d += 1;
                return;
            }
        }
        self.digits.insert(0, 1);
        self.int_len += 1;
    }

    /// (integer digits without leading zeros, possibly empty; `places` decimals).
    fn parts(&self, places: usize) -> (String, String) {
        let text = |ds: &[u8]| ds.iter().map(|&d| char::from(b'0' + d)).collect::<String>();
        let int_len = self.int_len.min(self.digits.len());
        let mut int = text(&self.digits[..int_len]);
        int.extend(std::iter::repeat_n('0', self.int_len - int_len));
        let mut frac = text(self.digits.get(self.int_len..).unwrap_or(&[]));
        frac.truncate(places);
        frac.extend(std::iter::repeat_n('0', places - frac.len()));
        (int.trim_start_matches('0').to_string(), frac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn shown(value: f64, code: &str) -> Option<String> {
        NumberFormat::parse(code)?.render(value)
    }

    #[test]
    fn identifiers_keep_their_leading_zeros() {
        assert_eq!(shown(123.0, "000000").as_deref(), Some("000123"));
        assert_eq!(shown(2134.0, "00000").as_deref(), Some("02134"));
        assert_eq!(shown(1234567.0, "0000").as_deref(), Some("1234567"), "more digits than placeholders");
        assert_eq!(shown(0.0, "000").as_deref(), Some("000"));
        assert_eq!(shown(123.0, "\"EMP-\"000000").as_deref(), Some("EMP-000123"));
        assert_eq!(shown(7.0, "\\#000").as_deref(), Some("#007"));
    }

    /// Excel shows `000123` under each of these; they read as `123` while only the bare `000000`
    /// was rendered.
    #[test]
    fn locale_currency_padding_conditions_and_text_sections_keep_leading_zeros() {
        for code in [
            "[$-409]000000",
            "[$-en-US]000000",
            "000000;@",
            "000000_)",
            "*-000000",
            "[>=100000]0;000000",
            "[Blue]000000",
            "[<1000][Red]000000;0",
        ] {
            assert_eq!(shown(123.0, code).as_deref(), Some("000123"), "{code:?}");
        }
        assert_eq!(shown(123.0, "[$€-407]000000").as_deref(), Some("€000123"));
        assert_eq!(shown(1234.5, "[$$-409]#,##0.00").as_deref(), Some("$1,234.50"));
        assert_eq!(shown(123456.0, "[>=100000]0;000000").as_deref(), Some("123456"));
        assert_eq!(shown(5.0, "_(0_);(0)").as_deref(), Some("5"));
        assert_eq!(shown(-5.0, "_(0_);(0)").as_deref(), Some("(5)"));
        assert_eq!(shown(0.0, "0;-0;0;\"text: \"@").as_deref(), Some("0"));
        assert_eq!(shown(5.0, "\"@home\"0").as_deref(), Some("@home5"), "a quoted @ is a literal");
        assert_eq!(shown(50.0, "[>100]0"), None, "no section for the value: Excel shows ####");
        assert_eq!(shown(-5.0, "[>=100000]0;000000"), None, "a negative value under conditions keeps its plain reading");
        assert_eq!(shown(5.0, "[>1][<9]0"), None, "two conditions in one section");
        assert_eq!(shown(7.0, "000000;[>5]0"), None, "a condition after a plain section");
        assert_eq!(shown(123.0, "[$-D00041E]000000"), None, "a locale that picks other digits");
        assert_eq!(shown(123.0, "[$-F400]000000").as_deref(), Some("000123"));
    }

    #[test]
    fn phone_and_postal_layouts_place_digits_right_to_left() {
        assert_eq!(shown(4155550100.0, "(000) 000-0000").as_deref(), Some("(415) 555-0100"));
        assert_eq!(shown(5550100.0, "000-000-0000").as_deref(), Some("000-555-0100"));
        assert_eq!(shown(123456789.0, "00000-0000").as_deref(), Some("12345-6789"));
        assert_eq!(shown(14155550100.0, "+0 000 000 0000").as_deref(), Some("+1 415 555 0100"));
    }

    #[test]
    fn decimals_percent_and_thousands_show_as_the_spreadsheet_does() {
        assert_eq!(shown(0.125, "0.0%").as_deref(), Some("12.5%"));
        assert_eq!(shown(0.5, "0%").as_deref(), Some("50%"));
        assert_eq!(shown(3.0, "0.00").as_deref(), Some("3.00"));
        assert_eq!(shown(2.5, "0").as_deref(), Some("3"), "half away from zero");
        assert_eq!(shown(1.005, "0.00").as_deref(), Some("1.01"), "decimal, not binary, rounding");
        assert_eq!(shown(9.996, "0.00").as_deref(), Some("10.00"));
        assert_eq!(shown(1234.5, "#,##0.00").as_deref(), Some("1,234.50"));
        assert_eq!(shown(1234567.0, "#,##0").as_deref(), Some("1,234,567"));
        assert_eq!(shown(0.0, "#,##0").as_deref(), Some("0"));
        assert_eq!(shown(1.5, "0.##").as_deref(), Some("1.5"));
        assert_eq!(shown(5.25, ".00").as_deref(), Some("5.25"), "no integer placeholder still shows the integer");
        assert_eq!(shown(0.5, ".00").as_deref(), Some(".50"));
        assert_eq!(shown(1234567890123456.0, "0").as_deref(), Some("1234567890123456"), "a 16-digit id is not cut to 15");
        assert_eq!(shown(1234567890123456.0, "#,##0").as_deref(), Some("1,234,567,890,123,456"));
        assert_eq!(shown(42.0, "$#,##0.00").as_deref(), Some("$42.00"));
        assert_eq!(shown(0.1 + 0.2, "0.00000000000000000").as_deref(), Some("0.30000000000000004"), "every digit of the value");
    }

    #[test]
    fn signs_and_sections() {
        assert_eq!(shown(-5.0, "000").as_deref(), Some("-005"));
        assert_eq!(shown(-5.0, "0;(0)").as_deref(), Some("(5)"));
        assert_eq!(shown(5.0, "0;(0)").as_deref(), Some("5"));
        assert_eq!(shown(0.0, "0;(0);\"zero\"0").as_deref(), Some("zero0"));
        assert_eq!(shown(-7.0, "[Red]0;[Blue](0)").as_deref(), Some("(7)"));
        assert_eq!(shown(3.0, "0;\"a;b\"0").as_deref(), Some("3"), "a quoted ; does not split");
        assert_eq!(shown(1234.0, "0\".\"00"), None, "a literal decimal mark would show another number");
        assert_eq!(shown(1234.0, "0\\,000"), None);
        assert_eq!(shown(-5.0, "0;0"), None, "a negative section that would hide the sign");
        assert_eq!(shown(-5.0, "0;0;\"zero\"").as_deref(), None);
    }

    #[test]
    fn formats_not_shown_exactly_are_left_to_the_caller() {
        for code in [
            "General",
            "@",
            "0.00E+00",
            "# ?/?",
            "0,",
            "#,##0,,",
            "[>100]0",
            "0;;",
            ";;;",
            "0;0;0;0;@",
            "yyyy-mm-dd",
            "\"no digits\"",
            "",
            "0\"unterminated",
            "[Red",
            "0\\",
            "0.0.0",
            "0.0,0",
        ] {
            assert_eq!(shown(12.5, code), None, "{code:?}");
        }
        // A value the format would show without a digit keeps its plain rendering.
        assert_eq!(shown(0.0, "#"), None);
        assert_eq!(shown(f64::NAN, "0"), None);
        assert_eq!(shown(f64::INFINITY, "0"), None);
    }

    #[test]
    fn hostile_formats_stay_bounded() {
        let zeros = "0".repeat(100_000);
        assert_eq!(shown(1.0, &zeros), None, "more placeholders than any real format");
        assert_eq!(shown(1.0, &format!("\"{}\"0", "x".repeat(100_000))), None);
        let ok = "0".repeat(MAX_PLACEHOLDERS);
        assert_eq!(shown(1.0, &ok).map(|s| s.len()), Some(MAX_PLACEHOLDERS));
        // The largest double has no digits to show past the 16th (it reads as 1.7976931348623157E+308).
        assert_eq!(shown(f64::MAX, "#,##0.00"), None);
        assert_eq!(shown(f64::MIN_POSITIVE, "0.00").as_deref(), Some("0.00"));
        assert_eq!(shown(5e-324, "0%").as_deref(), Some("0%"));
        // Each % is counted: 256 of them once wrapped a byte counter back to no % at all.
        assert_eq!(shown(5.0, &format!("0{}", "%".repeat(256))), None);
        assert_eq!(shown(5.0, &format!("{}0", "%".repeat(256))), None);
        assert_eq!(shown(5.0, "0%%").as_deref(), Some("50000%%"));
        assert_eq!(shown(5.0, "0%%%"), None);
    }

    proptest! {
        /// An integer under an all-zeros format reads back as itself, padded to the width.
        #[test]
        fn zero_padded_integers_read_back(v in 0u64..1_000_000_000_000, width in 1usize..20) {
            let text = shown(v as f64, &"0".repeat(width)).unwrap();
            prop_assert_eq!(text.parse::<u64>().unwrap(), v);
            prop_assert_eq!(text.len(), width.max(v.to_string().len()));
        }

        /// Any code and any number: no panic, and a rendering stays within the bounds.
        #[test]
        fn any_code_renders_bounded(code in "[0#.,%;\"\\\\ ()$\\-+ERa-z\\[\\]?/_*@]{0,40}", v in any::<f64>()) {
            if let Some(text) = shown(v, &code) {
                prop_assert!(text.len() <= 309 + 2 * MAX_PLACEHOLDERS + 4 * MAX_LITERAL_CHARS + 110, "{}", text.len());
                prop_assert!(text.chars().any(|c| c.is_ascii_digit()));
            }
        }

        /// Digits placed among literals (phone and id layouts): the digits shown, literals left
        /// out, are the value's, never fewer.
        #[test]
        fn placed_digits_are_never_lost(v in 0u64..100_000_000_000_000, parts in proptest::collection::vec(("[0#]{1,4}", prop_oneof![Just("-"), Just(" "), Just(") "), Just("\"ID\""), Just("\\/")]), 1..5)) {
            let code: String = parts.iter().flat_map(|(d, l)| [d.as_str(), *l]).collect();
            if let Some(text) = shown(v as f64, &format!("({code}")) {
                let digits: String = text.chars().filter(char::is_ascii_digit).collect();
                prop_assert_eq!(digits.parse::<u64>().unwrap(), v, "{} under {}", text, code);
            }
        }

        /// Grouped thousands read back as the rounded value.
        #[test]
        fn grouped_numbers_read_back(v in 0.0f64..1e12) {
            let text = shown(v, "#,##0.00").unwrap();
            let back: f64 = text.replace(',', "").parse().unwrap();
            prop_assert!((back - v).abs() <= 0.005 + v * 1e-14, "{} -> {}", v, text);
        }
    }
}
