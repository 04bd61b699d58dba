//! What reaches a terminal: text that came from a file, a peer or a user (titles, names, ids,
//! reasons) is printed with its control characters shown, never obeyed.
//!
//! Invariant: every human-readable line `carnet` prints (replies, errors, warnings, the demo's
//! narration) goes through `printable`. Escape sequences (C0 and C1 controls but the line end
//! and the tab, DEL) and the Unicode bidirectional controls, which can reorder what a reader
//! sees, are written as `\u{…}`. JSON output is left to serde_json (which escapes controls) and
//! a document's body, asked for raw, is written as it is.

use std::borrow::Cow;

/// True for a character a terminal would obey rather than show.
fn is_control(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(c,
            '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// `text` with every control character written as `\u{…}`.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_control(c) {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn controls_are_shown_not_obeyed() {
        assert_eq!(
            printable("CR de consultation\n\tligne 2"),
            "CR de consultation\n\tligne 2"
        );
        assert_eq!(printable("\u{1b}[31mrouge"), "\\u{1b}[31mrouge");
        assert_eq!(printable("abc\u{202e}fdp.exe"), "abc\\u{202e}fdp.exe");
        assert_eq!(printable("bell\u{7}\u{9b}"), "bell\\u{7}\\u{9b}");
        assert_eq!(printable("Élodie Ñúñez"), "Élodie Ñúñez");
    }
}
