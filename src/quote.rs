//! Client input inside error messages. gRPC carries a status message in a header and
//! clients cap headers (Go's default is 16 KiB for all of them), so a message must not
//! grow with the input it names.

/// The longest piece of client input an error message quotes.
pub const QUOTE_MAX: usize = 200;

/// The longest status message sent, whatever it quotes through paths or nested errors.
pub const MESSAGE_MAX: usize = 1024;

/// `s` for an error message: quoted, escaped, and cut to [`QUOTE_MAX`] bytes with the
/// full length said.
pub fn quote(s: &str) -> String {
    if s.len() <= QUOTE_MAX {
        return format!("{s:?}");
    }
    format!("{:?}… ({} bytes)", cut(s, QUOTE_MAX), s.len())
}

/// A whole message cut to [`MESSAGE_MAX`] bytes.
pub fn bounded(message: String) -> String {
    if message.len() <= MESSAGE_MAX {
        return message;
    }
    format!(
        "{}… (message cut, {} bytes)",
        cut(&message, MESSAGE_MAX),
        message.len()
    )
}

fn cut(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_are_bounded() {
        assert_eq!(quote("abc"), "\"abc\"");
        let long = "é".repeat(5000);
        let q = quote(&long);
        assert!(q.len() < QUOTE_MAX + 40, "{}", q.len());
        assert!(q.ends_with("(10000 bytes)"), "{q}");
        assert!(bounded("x".repeat(10_000)).len() < MESSAGE_MAX + 40);
        assert_eq!(bounded("short".into()), "short");
    }
}
