//! Text that enters the store by any door (the CLI, the local API, the inbox, a peer, a
//! bundle): free text a person wrote (titles, names, reasons) and codes a program wrote (type
//! codes, unique ids), checked by the same rules wherever it arrives.
//!
//! Invariants: a value these functions accept has a bounded length and no control or bidi
//! formatting characters, so it cannot rewrite a terminal or reorder what is shown beside it;
//! a code is printable ASCII without spaces. The error names the field, never the value (it may
//! be patient data, or crafted).

use crate::error::{Error, Result};

/// Whether `c` changes how text is shown rather than being shown: C0/C1 controls (newlines
/// and tabs included) and the Unicode bidi embeddings, overrides and isolates.
pub fn is_formatting(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{061c}')
}

/// A line of free text: at most `max_chars` characters, none of them formatting. `what` names
/// the field in the error.
pub fn line(text: &str, what: &str, max_chars: usize) -> Result<()> {
    if text.chars().count() > max_chars {
        return Err(Error::invalid(format!(
            "{what} is longer than {max_chars} characters"
        )));
    }
    if text.chars().any(is_formatting) {
        return Err(Error::invalid(format!(
            "{what} holds control or text-direction characters"
        )));
    }
    Ok(())
}

/// A line that must say something: `line`, and not blank.
pub fn required_line(text: &str, what: &str, max_chars: usize) -> Result<()> {
    if text.trim().is_empty() {
        return Err(Error::invalid(format!("{what} is empty")));
    }
    line(text, what, max_chars)
}

/// A code: 1 to `max` printable ASCII characters, no spaces.
pub fn code(text: &str, what: &str, max: usize) -> Result<()> {
    if text.is_empty() || text.len() > max || !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::invalid(format!(
            "{what} must be 1 to {max} printable ASCII characters without spaces"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting_characters_and_overlong_text_are_refused_and_the_error_hides_the_value() {
        for bad in [
            "a\u{1b}[2Jb",
            "line\nbreak",
            "\u{202e}fdp.exe",
            "tab\there",
            "\u{85}next",
        ] {
            let err = line(bad, "the title", 100).expect_err(bad).to_string();
            assert!(err.contains("the title"), "{err}");
            assert!(!err.contains(bad), "{err}");
        }
        assert!(line(&"é".repeat(101), "the title", 100).is_err());
        line(&"é".repeat(100), "the title", 100).expect("100 characters");
        line("Compte rendu d'hospitalisation — 2026", "the title", 100).expect("plain");
        assert!(required_line("  ", "the title", 10).is_err());
        code("11488-4", "the type code", 64).expect("loinc");
        for bad in ["", "a b", "é", "a\u{7f}"] {
            assert!(code(bad, "the type code", 64).is_err(), "{bad:?}");
        }
        assert!(code(&"1".repeat(65), "the type code", 64).is_err());
    }
}
