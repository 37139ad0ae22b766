//! JSON and timestamps as Go's `encoding/json` and `time` write them, so records written here
//! look like records c/storage writes: compact, keys in insertion order (serde_json's
//! `preserve_order`), `<`, `>`, `&`, U+2028 and U+2029 escaped, times in RFC 3339 with
//! nanoseconds and trailing zeros cut.

use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::ser::Formatter;

/// serde_json formatter adding Go's HTML-safe escapes to the compact form.
struct GoFormatter;

impl Formatter for GoFormatter {
    fn write_string_fragment<W: ?Sized + io::Write>(&mut self, writer: &mut W, fragment: &str) -> io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            let esc = match c {
                '<' => "\\u003c",
                '>' => "\\u003e",
                '&' => "\\u0026",
                '\u{2028}' => "\\u2028",
                '\u{2029}' => "\\u2029",
                _ => continue,
            };
            writer.write_all(&fragment.as_bytes()[start..i])?;
            writer.write_all(esc.as_bytes())?;
            start = i + c.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}

/// Serializes like Go's `json.Marshal`.
pub fn to_go_json<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, GoFormatter);
    // Serializing a Value or plain structs into a Vec cannot fail (no maps with non-string keys).
    value.serialize(&mut ser).expect("serializing JSON into memory");
    out
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

fn split(t: SystemTime) -> (i64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            let secs = -(d.as_secs() as i64);
            if d.subsec_nanos() == 0 {
                (secs, 0)
            } else {
                (secs - 1, 1_000_000_000 - d.subsec_nanos())
            }
        }
    }
}

fn date_time(secs: i64) -> String {
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!("{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// Go `time.RFC3339Nano` in UTC: `2026-04-15T00:33:04.123456789Z`, trailing zeros cut.
pub fn rfc3339_nano(t: SystemTime) -> String {
    let (secs, nanos) = split(t);
    let mut out = date_time(secs);
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

/// Go `time.RFC3339` in UTC: `2026-04-15T00:33:04Z`.
pub fn rfc3339_seconds(t: SystemTime) -> String {
    format!("{}Z", date_time(split(t).0))
}

/// `SystemTime` from seconds since the epoch.
pub fn from_unix(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_json_escapes_html() {
        let v = serde_json::json!({"b": "<a&b>", "a": [1, "x\u{2028}"]});
        assert_eq!(String::from_utf8(to_go_json(&v)).unwrap(), r#"{"b":"\u003ca\u0026b\u003e","a":[1,"x\u2028"]}"#);
    }

    #[test]
    fn times_format_like_go() {
        let cases = [
            (0i64, 0u32, "1970-01-01T00:00:00Z"),
            (1_776_213_184, 123_456_789, "2026-04-15T00:33:04.123456789Z"),
            (1_776_213_184, 120_000_000, "2026-04-15T00:33:04.12Z"),
            (951_782_400, 0, "2000-02-29T00:00:00Z"),
        ];
        for (secs, nanos, want) in cases {
            let t = UNIX_EPOCH + Duration::new(secs as u64, nanos);
            assert_eq!(rfc3339_nano(t), want);
        }
        assert_eq!(rfc3339_seconds(UNIX_EPOCH + Duration::new(1_776_213_184, 5)), "2026-04-15T00:33:04Z");
    }
}
