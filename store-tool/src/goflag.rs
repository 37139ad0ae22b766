//! Command-line parsing the way Go's `flag` package does it (parallax parses with
//! `flag.CommandLine`, ExitOnError), so scripts written for parallax behave the same:
//! `-name` and `--name` alike, `-name value` / `-name=value`, bools only as `-name` or
//! `-name=true|false`, parsing stops at the first non-flag word or `--`, the same error texts.

use std::collections::BTreeMap;

/// Kind of value a flag takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `-x` or `-x=bool`.
    Bool,
    /// `-x value` or `-x=value`.
    String,
}

/// One defined flag.
#[derive(Debug, Clone, Copy)]
pub struct Flag {
    /// Name without dashes.
    pub name: &'static str,
    /// Value kind.
    pub kind: Kind,
    /// Default value as Go prints it (`""`, `false`, or the text).
    pub default: &'static str,
    /// Usage text (verbatim from parallax where it defines the flag).
    pub usage: &'static str,
}

/// Why parsing stopped early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// `-h`, `-help` or `--help` (Go's `ErrHelp`: banner, exit 0).
    Help,
    /// A Go flag error message (printed with the banner, exit 2).
    Bad(String),
}

/// What was parsed: values set on the command line (last wins) and the positional words.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    /// Flag name → value (bools as `true`/`false`).
    pub values: BTreeMap<&'static str, String>,
    /// Words that are not flags. With `interleaved`, every such word; otherwise the first
    /// non-flag word and everything after it (parallax ignores them).
    pub positional: Vec<String>,
}

/// Go `strconv.ParseBool`.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Parses `args` against `flags`. `interleaved` lets flags follow positional words (the
/// subcommand forms); without it parsing stops at the first non-flag word, as Go's does.
pub fn parse(flags: &[Flag], args: &[String], interleaved: bool) -> Result<Parsed, ParseError> {
    let mut out = Parsed::default();
    let mut i = 0;
    while i < args.len() {
        let s = args[i].as_str();
        i += 1;
        if s.len() < 2 || !s.starts_with('-') {
            out.positional.push(s.to_string());
            if interleaved {
                continue;
            }
            out.positional.extend(args[i..].iter().cloned());
            break;
        }
        let dashes = if s.as_bytes()[1] == b'-' { 2 } else { 1 };
        if s == "--" {
            out.positional.extend(args[i..].iter().cloned());
            break;
        }
        let body = &s[dashes..];
        if body.is_empty() || body.starts_with('-') || body.starts_with('=') {
            return Err(ParseError::Bad(format!("bad flag syntax: {s}")));
        }
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (body, None),
        };
        let Some(flag) = flags.iter().find(|f| f.name == name) else {
            if name == "help" || name == "h" {
                return Err(ParseError::Help);
            }
            return Err(ParseError::Bad(format!("flag provided but not defined: -{name}")));
        };
        let value = match (flag.kind, value) {
            (Kind::Bool, None) => "true".to_string(),
            (Kind::Bool, Some(v)) => match parse_bool(v) {
                Some(b) => b.to_string(),
                None => return Err(ParseError::Bad(format!("invalid boolean value \"{v}\" for -{name}: parse error"))),
            },
            (Kind::String, Some(v)) => v.to_string(),
            (Kind::String, None) => match args.get(i) {
                Some(v) => {
                    i += 1;
                    v.clone()
                }
                None => return Err(ParseError::Bad(format!("flag needs an argument: -{name}"))),
            },
        };
        out.values.insert(flag.name, value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLAGS: &[Flag] = &[
        Flag { name: "migrate", kind: Kind::Bool, default: "false", usage: "" },
        Flag { name: "image", kind: Kind::String, default: "", usage: "" },
    ];

    fn run(args: &[&str], interleaved: bool) -> Result<Parsed, ParseError> {
        parse(FLAGS, &args.iter().map(|s| s.to_string()).collect::<Vec<_>>(), interleaved)
    }

    fn values(p: &Parsed) -> Vec<(&str, &str)> {
        p.values.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    #[test]
    fn go_flag_forms() {
        type Case<'a> = (&'a [&'a str], Vec<(&'a str, &'a str)>, Vec<&'a str>);
        let cases: &[Case] = &[
            (&["--migrate", "--image", "x"], vec![("image", "x"), ("migrate", "true")], vec![]),
            (&["-migrate=false", "-image=a=b"], vec![("image", "a=b"), ("migrate", "false")], vec![]),
            (&["-migrate", "false", "-image", "x"], vec![("migrate", "true")], vec!["false", "-image", "x"]),
            (&["--migrate", "foo", "--image", "x"], vec![("migrate", "true")], vec!["foo", "--image", "x"]),
            (&["-image", "a", "-image", "b"], vec![("image", "b")], vec![]),
            (&["--", "-image", "x"], vec![], vec!["-image", "x"]),
            (&["-", "-image", "x"], vec![], vec!["-", "-image", "x"]),
        ];
        for (args, want_values, want_pos) in cases {
            let p = run(args, false).unwrap();
            assert_eq!(values(&p), *want_values, "{args:?}");
            assert_eq!(p.positional, *want_pos, "{args:?}");
        }
    }

    #[test]
    fn interleaved_collects_positionals() {
        let p = run(&["alpine", "--migrate", "extra"], true).unwrap();
        assert_eq!(p.positional, vec!["alpine", "extra"]);
        assert_eq!(values(&p), vec![("migrate", "true")]);
    }

    #[test]
    fn go_flag_errors() {
        let cases: &[(&[&str], ParseError)] = &[
            (&["-unknownflag"], ParseError::Bad("flag provided but not defined: -unknownflag".into())),
            (&["--unknown=1"], ParseError::Bad("flag provided but not defined: -unknown".into())),
            (&["-image"], ParseError::Bad("flag needs an argument: -image".into())),
            (&["-migrate=x"], ParseError::Bad("invalid boolean value \"x\" for -migrate: parse error".into())),
            (&["---x"], ParseError::Bad("bad flag syntax: ---x".into())),
            (&["-=x"], ParseError::Bad("bad flag syntax: -=x".into())),
            (&["-h"], ParseError::Help),
            (&["--help"], ParseError::Help),
            (&["-help"], ParseError::Help),
        ];
        for (args, want) in cases {
            assert_eq!(run(args, false).unwrap_err(), *want, "{args:?}");
        }
    }
}
