//! A quick reader for the common shape of a Tuya envelope: one flat JSON object whose values
//! are plain strings, numbers, booleans or `null`.
//!
//! The envelope's sealed field is hundreds of base64 characters, and serde_json scans a
//! string eight bytes at a time with three tests per word; here a vectorized `memchr2` finds
//! its end. Only a strict subset of JSON is read: any escape, nested value, unusual number or
//! stray byte answers `None`, and the caller reads the text with serde_json instead, whose
//! error then names what is wrong. So this never accepts what serde_json refuses, and where
//! it answers, it answers what serde_json's raw reading would (see the tests).

use std::borrow::Cow;

/// The object's fields in order, each value as its raw JSON text; `None` if the text is not
/// a flat object of plain values.
pub(super) fn fields(text: &str) -> Option<Vec<(Cow<'_, str>, &str)>> {
    let bytes = text.as_bytes();
    let mut at = skip_space(bytes, 0);
    if bytes.get(at) != Some(&b'{') {
        return None;
    }
    at = skip_space(bytes, at + 1);
    let mut fields = Vec::with_capacity(6);
    if bytes.get(at) == Some(&b'}') {
        at += 1;
    } else {
        loop {
            let key_end = string_end(bytes, at)?;
            let key = &text[at + 1..key_end - 1];
            at = skip_space(bytes, key_end);
            if bytes.get(at) != Some(&b':') {
                return None;
            }
            at = skip_space(bytes, at + 1);
            let value_end = match bytes.get(at)? {
                b'"' => string_end(bytes, at)?,
                b'-' | b'0'..=b'9' => number_end(bytes, at)?,
                b't' => literal_end(bytes, at, b"true")?,
                b'f' => literal_end(bytes, at, b"false")?,
                b'n' => literal_end(bytes, at, b"null")?,
                _ => return None,
            };
            fields.push((Cow::Borrowed(key), &text[at..value_end]));
            at = skip_space(bytes, value_end);
            match bytes.get(at)? {
                b',' => at = skip_space(bytes, at + 1),
                b'}' => {
                    at += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    (skip_space(bytes, at) == bytes.len()).then_some(fields)
}

/// The first index from `at` that is not JSON whitespace.
fn skip_space(bytes: &[u8], mut at: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = bytes.get(at) {
        at += 1;
    }
    at
}

/// The index after the closing quote of the string opening at `at`, if it has no escape
/// and no control character.
fn string_end(bytes: &[u8], at: usize) -> Option<usize> {
    if bytes.get(at) != Some(&b'"') {
        return None;
    }
    let rest = &bytes[at + 1..];
    let len = memchr::memchr2(b'"', b'\\', rest)?;
    let inner = &rest[..len];
    // A fold without an early exit, so that it is vectorized: a sealed field is hundreds of
    // bytes.
    let controls = inner.iter().fold(0u8, |seen, &b| seen | u8::from(b < 0x20));
    if rest[len] == b'\\' || controls != 0 {
        return None;
    }
    Some(at + 1 + len + 1)
}

/// The index after the number starting at `at`, in JSON's grammar
/// `-?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn number_end(bytes: &[u8], mut at: usize) -> Option<usize> {
    if bytes.get(at) == Some(&b'-') {
        at += 1;
    }
    match bytes.get(at)? {
        b'0' => at += 1,
        b'1'..=b'9' => at = digits_end(bytes, at),
        _ => return None,
    }
    if bytes.get(at) == Some(&b'.') {
        let end = digits_end(bytes, at + 1);
        if end == at + 1 {
            return None;
        }
        at = end;
    }
    if let Some(b'e' | b'E') = bytes.get(at) {
        at += 1;
        if let Some(b'+' | b'-') = bytes.get(at) {
            at += 1;
        }
        let end = digits_end(bytes, at);
        if end == at {
            return None;
        }
        at = end;
    }
    Some(at)
}

fn digits_end(bytes: &[u8], mut at: usize) -> usize {
    while bytes.get(at).is_some_and(u8::is_ascii_digit) {
        at += 1;
    }
    at
}

fn literal_end(bytes: &[u8], at: usize, word: &[u8]) -> Option<usize> {
    bytes[at..].starts_with(word).then_some(at + word.len())
}

#[cfg(test)]
mod tests {
    use super::fields;

    fn read(text: &str) -> Option<Vec<(String, String)>> {
        fields(text).map(|fields| {
            fields
                .into_iter()
                .map(|(k, v)| (k.into_owned(), v.to_owned()))
                .collect()
        })
    }

    fn pairs(list: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
        Some(
            list.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn a_flat_object_of_plain_values_is_read_as_raw_text_in_order() {
        assert_eq!(
            read(
                r#" { "data" : "AbC+/=", "protocol":4,"pv":"2.0","t":-1.5e+3,"ok":true,"no":false,"x":null } "#
            ),
            pairs(&[
                ("data", r#""AbC+/=""#),
                ("protocol", "4"),
                ("pv", r#""2.0""#),
                ("t", "-1.5e+3"),
                ("ok", "true"),
                ("no", "false"),
                ("x", "null"),
            ])
        );
        assert_eq!(read("{}"), pairs(&[]));
        assert_eq!(
            read(r#"{"a":1,"a":2}"#),
            pairs(&[("a", "1"), ("a", "2")]),
            "duplicates are kept, as the serde reading keeps them"
        );
    }

    #[test]
    fn anything_outside_the_plain_subset_is_left_to_serde_json() {
        for text in [
            "",
            "[]",
            r#"{"a":"x\/y"}"#,
            r#"{"a\u0041":1}"#,
            "{\"a\":\"tab\there\"}",
            r#"{"a":{"b":1}}"#,
            r#"{"a":[1]}"#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":.5}"#,
            r#"{"a":1e}"#,
            r#"{"a":-}"#,
            r#"{"a":+1}"#,
            r#"{"a":tru}"#,
            r#"{"a":nul}"#,
            r#"{"a":1,}"#,
            r#"{"a" 1}"#,
            r#"{"a":1"#,
            r#"{"a":"unterminated}"#,
            r#"{"a":1} x"#,
            r#"{"a":1}}"#,
            r#"{a:1}"#,
            r#"{"a":1 "b":2}"#,
        ] {
            assert_eq!(read(text), None, "{text}");
        }
    }
}
