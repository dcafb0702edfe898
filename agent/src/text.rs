//! Text that traced processes control (their names, file paths, symbols),
//! made safe to print: control characters become spaces or go, invisible
//! formatting (bidirectional overrides, zero-width characters) goes, and
//! the length is capped, so such a string can neither forge output lines
//! nor hide what it says.

/// Invisible formatting characters that can reorder or hide text.
fn invisible(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// `s` with whitespace as plain spaces, no control or invisible
/// characters, at most `max` characters (the last one `…` when cut).
#[must_use]
pub fn sanitize(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_whitespace() { ' ' } else { c })
        .filter(|c| !c.is_control() && !invisible(*c))
        .collect();
    if out.chars().count() > max {
        out = out.chars().take(max.saturating_sub(1)).collect();
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_lines_and_hidden_text_are_defused() {
        assert_eq!(sanitize("a\nb\tc\u{1b}[0m", 20), "a b c[0m");
        assert_eq!(sanitize("x\u{202E}y\u{200B}z", 20), "xyz");
        assert_eq!(sanitize("abcdef", 4), "abc…");
        assert_eq!(sanitize("héllo", 5), "héllo");
    }
}
