//! Every phrase users and parallax's bats suite look for, and the logrus-style logger that
//! prints them to stdout (`time="…" level=info msg="…"`, as parallax's `TextFormatter` does
//! when stdout is not a terminal). Tests match these phrases as substrings; keep them verbatim.

use std::io::Write;

use crate::error::Error;

/// `Image already migrated. Nothing to do.`
pub const ALREADY_MIGRATED: &str = "Image already migrated. Nothing to do.";

/// `Migration successfully completed for image: <new image ID>`.
pub fn migration_done(image_id: &str) -> String {
    format!("Migration successfully completed for image: {image_id}")
}

/// `Removal successfully completed for image: <image as typed>`.
pub fn removal_done(image: &str) -> String {
    format!("Removal successfully completed for image: {image}")
}

/// `Could not locate image <image>: <err>` (rmi of an unknown image; exit 0).
pub fn could_not_locate(image: &str, err: &Error) -> String {
    format!("Could not locate image {image}: {err}")
}

/// Which operation a store validation failure happened before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `--migrate` / `migrate`.
    Migrate,
    /// `--rmi` / `rmi`.
    Rmi,
}

/// `Storage validation failed before migration: <e>` / `… before rmi: <e>`.
pub fn validation_failed(op: Op, err: &Error) -> String {
    let what = match op {
        Op::Migrate => "migration",
        Op::Rmi => "rmi",
    };
    format!("Storage validation failed before {what}: {err}")
}

/// `Migration failed for image '<image>': <err>`.
pub fn migration_failed(image: &str, err: &Error) -> String {
    format!("Migration failed for image '{image}': {err}")
}

/// `RMI operation failed for image '<image>': <err>`.
pub fn rmi_failed(image: &str, err: &Error) -> String {
    format!("RMI operation failed for image '{image}': {err}")
}

/// `Starting migration for image: <image>`.
pub fn migration_start(image: &str) -> String {
    format!("Starting migration for image: {image}")
}

/// `Starting removal of image: <image>`.
pub fn removal_start(image: &str) -> String {
    format!("Starting removal of image: {image}")
}

/// Go's `strconv.Quote` (what `%q` prints): escapes `"`, `\` and control characters.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0b' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// logrus levels, most severe first (`--log-level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// `panic`.
    Panic,
    /// `fatal`.
    Fatal,
    /// `error`.
    Error,
    /// `warn`, `warning`.
    Warn,
    /// `info` (default).
    Info,
    /// `debug`.
    Debug,
    /// `trace`.
    Trace,
}

impl Level {
    /// logrus `ParseLevel`: case-insensitive, `warn` and `warning` alike.
    pub fn parse(s: &str) -> Option<Level> {
        Some(match s.to_ascii_lowercase().as_str() {
            "panic" => Level::Panic,
            "fatal" => Level::Fatal,
            "error" => Level::Error,
            "warn" | "warning" => Level::Warn,
            "info" => Level::Info,
            "debug" => Level::Debug,
            "trace" => Level::Trace,
            _ => return None,
        })
    }

    /// The word logrus prints after `level=`.
    pub fn word(self) -> &'static str {
        match self {
            Level::Panic => "panic",
            Level::Fatal => "fatal",
            Level::Error => "error",
            Level::Warn => "warning",
            Level::Info => "info",
            Level::Debug => "debug",
            Level::Trace => "trace",
        }
    }
}

/// Prints log lines to stdout, filtered by `--log-level`.
pub struct Logger<'a> {
    out: &'a mut dyn Write,
    level: Level,
    timestamps: bool,
}

impl std::fmt::Debug for Logger<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logger").field("level", &self.level).field("timestamps", &self.timestamps).finish()
    }
}

impl<'a> Logger<'a> {
    /// A logger writing to `out`; `timestamps: false` leaves out `time="…"` (tests).
    pub fn new(out: &'a mut dyn Write, level: Level, timestamps: bool) -> Logger<'a> {
        Logger { out, level, timestamps }
    }

    /// Prints one line at `level` unless filtered out.
    pub fn log(&mut self, level: Level, msg: &str) {
        if level > self.level {
            return;
        }
        let mut line = String::new();
        if self.timestamps {
            line.push_str(&format!("time=\"{}\" ", crate::store::json::rfc3339_seconds(std::time::SystemTime::now())));
        }
        line.push_str("level=");
        line.push_str(level.word());
        line.push_str(" msg=");
        line.push_str(&logrus_value(msg));
        line.push('\n');
        // stdout gone (closed pipe): nothing sensible to do, and no reason to abort the operation.
        let _ = self.out.write_all(line.as_bytes());
        let _ = self.out.flush();
    }

    /// `level=info`.
    pub fn info(&mut self, msg: &str) {
        self.log(Level::Info, msg);
    }
    /// `level=debug`.
    pub fn debug(&mut self, msg: &str) {
        self.log(Level::Debug, msg);
    }
    /// `level=error`.
    pub fn error(&mut self, msg: &str) {
        self.log(Level::Error, msg);
    }
    /// `level=fatal` (the caller then exits 1, as logrus `Fatal` does).
    pub fn fatal(&mut self, msg: &str) {
        self.log(Level::Fatal, msg);
    }

    /// The raw output (for `list`/`verify`, which print tables or JSON, not log lines).
    pub fn out(&mut self) -> &mut dyn Write {
        self.out
    }
}

/// logrus `TextFormatter` quoting: bare when made of `[A-Za-z0-9-._/@^+]`, else `%q`.
fn logrus_value(s: &str) -> String {
    let bare = !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '/' | '@' | '^' | '+'));
    if bare {
        s.to_string()
    } else {
        go_quote(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_matches_go() {
        let cases = [
            ("plain", "\"plain\""),
            ("a \"b\"", r#""a \"b\"""#),
            ("tab\there\n", r#""tab\there\n""#),
            ("back\\slash", r#""back\\slash""#),
            ("\x01", r#""\x01""#),
            ("é", "\"é\""),
        ];
        for (input, want) in cases {
            assert_eq!(go_quote(input), want, "{input:?}");
        }
    }

    #[test]
    fn log_lines_look_like_logrus() {
        let mut buf = Vec::new();
        {
            let mut log = Logger::new(&mut buf, Level::Info, false);
            log.info(&migration_done("abc"));
            log.debug("hidden");
            log.log(Level::Warn, "careful");
            log.error(&could_not_locate("alpine", &Error::ImageNotFound("alpine".into())));
            log.info("bare-word");
        }
        let text = String::from_utf8(buf).unwrap();
        assert_eq!(
            text,
            "level=info msg=\"Migration successfully completed for image: abc\"\n\
             level=warning msg=careful\n\
             level=error msg=\"Could not locate image alpine: Image not found: \\\"alpine\\\"\"\n\
             level=info msg=bare-word\n"
        );
    }

    #[test]
    fn levels_parse_like_logrus() {
        let cases = [
            ("info", Some(Level::Info)),
            ("INFO", Some(Level::Info)),
            ("warning", Some(Level::Warn)),
            ("Warn", Some(Level::Warn)),
            ("trace", Some(Level::Trace)),
            ("panic", Some(Level::Panic)),
            ("verbose", None),
            ("", None),
        ];
        for (input, want) in cases {
            assert_eq!(Level::parse(input), want, "{input:?}");
        }
    }

    #[test]
    fn fixed_phrases() {
        let e = Error::Other("boom".into());
        assert_eq!(migration_failed("x:1", &e), "Migration failed for image 'x:1': boom");
        assert_eq!(rmi_failed("x", &e), "RMI operation failed for image 'x': boom");
        assert_eq!(validation_failed(Op::Migrate, &e), "Storage validation failed before migration: boom");
        assert_eq!(validation_failed(Op::Rmi, &e), "Storage validation failed before rmi: boom");
        assert_eq!(removal_done("alpine:3.18"), "Removal successfully completed for image: alpine:3.18");
    }
}
