//! Splits `--mksquashfs-opts` into words as a POSIX shell would (quotes, backslashes), like
//! parallax's go-shellwords parser, but never runs anything: backticks and `$(...)`, which
//! parallax would execute, and shell operators are refused.

/// Splits `line` into words, or says what is wrong with it.
pub fn split(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let (mut single, mut double, mut escaped) = (false, false, false);
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if escaped {
            word.push(c);
            escaped = false;
            in_word = true;
            continue;
        }
        match c {
            '\\' if !single => escaped = true,
            '\'' if !double => {
                single = !single;
                in_word = true;
            }
            '"' if !single => {
                double = !double;
                in_word = true;
            }
            '`' if !single => return Err(format!("command substitution (`) is not executed: {line}")),
            '$' if !single && chars.peek() == Some(&'(') => {
                return Err(format!("command substitution ($(...)) is not executed: {line}"))
            }
            ';' | '&' | '|' | '<' | '>' if !single && !double => {
                return Err(format!("shell operator '{c}' is not allowed: {line}"))
            }
            ' ' | '\t' | '\n' | '\r' if !single && !double => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            _ => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if single || double || escaped {
        return Err("invalid command line string".to_string());
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn splits_like_a_shell() {
        let cases: &[(&str, &[&str])] = &[
            ("-noappend -comp zstd -Xcompression-level 3", &["-noappend", "-comp", "zstd", "-Xcompression-level", "3"]),
            ("  -e 'a b'  \"c d\" e\\ f ", &["-e", "a b", "c d", "e f"]),
            ("-e '' x", &["-e", "", "x"]),
            ("'$(not run)' '`x`'", &["$(not run)", "`x`"]),
            ("a\"b\"c", &["abc"]),
            ("$HOME", &["$HOME"]),
            ("", &[]),
        ];
        for (line, want) in cases {
            assert_eq!(split(line).unwrap(), *want, "{line:?}");
        }
    }

    #[test]
    fn refuses_what_would_run_code() {
        for line in ["-e `id`", "-e $(id)", "-e \"$(id)\"", "a; rm -rf /", "a | b", "a > f", "'open", "\"open", "x\\"] {
            assert!(split(line).is_err(), "{line:?}");
        }
        assert_eq!(split("'open").unwrap_err(), "invalid command line string");
    }
}
