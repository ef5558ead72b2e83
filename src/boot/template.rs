//! Boot loader scripts from templates, and the text that may go into them: whatever a value
//! holds (a reason, a URL), it can never become a command of iPXE or GRUB.

/// Text safe inside an iPXE `echo` or a double-quoted GRUB string: letters, digits and a few
/// punctuation marks; anything either would interpret (`$`, `&&`, `||`, `#`, `;`, quotes,
/// backslashes, newlines, `=`) becomes a space.
pub fn plain_text(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || " .,:()/_-`'".contains(c) {
                c
            } else {
                ' '
            }
        })
        .collect()
}

/// A URL safe in a script: only URL characters (no spaces, `$`, `&`, `|`, `;`, quotes).
pub fn url_text(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || ":/.-_[]%".contains(*c))
        .collect()
}

/// Replaces each `{{name}}` in one pass over the template, so a value can never introduce a
/// placeholder of its own. Values must already be safe (see [`plain_text`], [`url_text`]).
pub fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + 256);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find("}}") {
            Some(end) => {
                let name = &after[..end];
                match vars.iter().find(|(n, _)| *n == name) {
                    Some((_, v)) => out.push_str(v),
                    None => panic!("template placeholder {{{{{name}}}}} has no value"),
                }
                rest = &after[end + 2..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}
