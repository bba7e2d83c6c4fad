//! A quick reader for the common shapes of Tuya JSON: the envelope, one flat object of plain
//! strings, numbers, booleans and `null`; and the protocol 4 status body, the same with one
//! array of such objects.
//!
//! serde_json scans a string eight bytes at a time with three tests per word, and the
//! envelope's sealed field is hundreds of base64 characters; here a table ends short strings
//! and a vectorized `memchr2` long ones. Only a strict subset of JSON is read: any escape,
//! nested value, unusual number or stray byte answers `None`, and the caller reads the text
//! with serde_json instead, whose error then names what is wrong. So this never accepts what
//! serde_json refuses, and where it answers, it answers what serde_json's reading would (see
//! the tests here, in `envelope` and in `normalize`).

use std::borrow::Cow;

/// An object's fields in order, each value as its raw JSON text.
pub(super) type Fields<'a> = Vec<(Cow<'a, str>, &'a str)>;

/// The fields of a flat object of plain values; `None` for any other text.
pub(super) fn fields(text: &str) -> Option<Fields<'_>> {
    let bytes = text.as_bytes();
    let (fields, end) = object(text, skip_space(bytes, 0), None)?;
    (skip_space(bytes, end) == bytes.len()).then_some(fields)
}

/// The fields of an object of plain values but for `list`, whose value must be an array of
/// flat objects (a Tuya status body: `{"devId":…,"status":[{…},{…}]}`), and those objects'
/// fields. `None` for any other text, for a `list` that is not an array, or for two of them.
pub(super) fn fields_with_list<'a>(
    text: &'a str,
    list: &str,
) -> Option<(Fields<'a>, Vec<Fields<'a>>)> {
    let bytes = text.as_bytes();
    let mut items = None;
    let (fields, end) = object(text, skip_space(bytes, 0), Some((list, &mut items)))?;
    (skip_space(bytes, end) == bytes.len()).then_some((fields, items.unwrap_or_default()))
}

/// Where a [`fields_with_list`] array goes.
type List<'k, 'o, 'a> = Option<(&'k str, &'o mut Option<Vec<Fields<'a>>>)>;

/// Reads the object opening at `at`: its fields and the index after it.
fn object<'a>(
    text: &'a str,
    mut at: usize,
    mut list: List<'_, '_, 'a>,
) -> Option<(Fields<'a>, usize)> {
    let bytes = text.as_bytes();
    if bytes.get(at) != Some(&b'{') {
        return None;
    }
    at = skip_space(bytes, at + 1);
    let mut fields = Vec::with_capacity(6);
    if bytes.get(at) == Some(&b'}') {
        return Some((fields, at + 1));
    }
    loop {
        let key_end = string_end(bytes, at)?;
        let key = &text[at + 1..key_end - 1];
        at = skip_space(bytes, key_end);
        if bytes.get(at) != Some(&b':') {
            return None;
        }
        at = skip_space(bytes, at + 1);
        let value_end = match (bytes.get(at)?, &mut list) {
            (b'[', Some((name, items))) if key == *name && items.is_none() => {
                let (read, end) = array(text, at)?;
                **items = Some(read);
                end
            }
            (_, Some((name, _))) if key == *name => return None,
            (b'"', _) => string_end(bytes, at)?,
            (b'-' | b'0'..=b'9', _) => number_end(bytes, at)?,
            (b't', _) => literal_end(bytes, at, b"true")?,
            (b'f', _) => literal_end(bytes, at, b"false")?,
            (b'n', _) => literal_end(bytes, at, b"null")?,
            _ => return None,
        };
        fields.push((Cow::Borrowed(key), &text[at..value_end]));
        at = skip_space(bytes, value_end);
        match bytes.get(at)? {
            b',' => at = skip_space(bytes, at + 1),
            b'}' => return Some((fields, at + 1)),
            _ => return None,
        }
    }
}

/// Reads the array of flat objects opening at `at`: their fields and the index after it.
fn array(text: &str, mut at: usize) -> Option<(Vec<Fields<'_>>, usize)> {
    let bytes = text.as_bytes();
    at = skip_space(bytes, at + 1);
    let mut items = Vec::with_capacity(8);
    if bytes.get(at) == Some(&b']') {
        return Some((items, at + 1));
    }
    loop {
        let (item, end) = object(text, at, None)?;
        items.push(item);
        at = skip_space(bytes, end);
        match bytes.get(at)? {
            b',' => at = skip_space(bytes, at + 1),
            b']' => return Some((items, at + 1)),
            _ => return None,
        }
    }
}

/// The text of a string value read here (it has no escapes, so it is its own text); `None`
/// for any other value.
pub(super) fn string(raw: &str) -> Option<&str> {
    raw.strip_prefix('"')?.strip_suffix('"')
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
    /// Keys and most values end within this many bytes: a loop over a table finds their end
    /// sooner than `memchr2` is set up. Longer strings (the sealed field) go on with
    /// `memchr2` and a vectorized check for control characters.
    const SHORT: usize = 32;
    if bytes.get(at) != Some(&b'"') {
        return None;
    }
    let rest = &bytes[at + 1..];
    let short = rest.len().min(SHORT);
    let len = match rest[..short].iter().position(|&b| STOPS[usize::from(b)]) {
        Some(len) => len,
        None => {
            let long = &rest[short..];
            let len = memchr::memchr2(b'"', b'\\', long)?;
            // A fold without an early exit, so that it is vectorized.
            let controls = long[..len]
                .iter()
                .fold(0u8, |seen, &b| seen | u8::from(b < 0x20));
            if controls != 0 {
                return None;
            }
            short + len
        }
    };
    (rest[len] == b'"').then_some(at + 1 + len + 1)
}

/// The bytes that end the plain part of a JSON string: a quote, a backslash, a control
/// character.
static STOPS: [bool; 256] = {
    let mut stops = [false; 256];
    let mut byte = 0;
    while byte < 0x20 {
        stops[byte] = true;
        byte += 1;
    }
    stops[b'"' as usize] = true;
    stops[b'\\' as usize] = true;
    stops
};

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

/// Random edits of JSON texts, for the property tests that hold these readers to serde_json.
#[cfg(test)]
pub(super) mod testing {
    use proptest::prelude::*;

    /// Bytes that change what a JSON text means.
    const EDITS: &[u8] = b"\"\\{}[],:019-.eE+tfnul \t\n\x01";

    /// One to three edits of a text of `len` bytes: a place, a byte, and whether it replaces
    /// (0), is inserted (1) or removes (2) the byte there.
    pub(in crate::dialect::tuya) fn edits(
        len: usize,
    ) -> impl Strategy<Value = Vec<(usize, u8, u8)>> {
        proptest::collection::vec((0..len, proptest::sample::select(EDITS), 0..3u8), 1..4)
    }

    /// `text` with `edits` made.
    pub(in crate::dialect::tuya) fn edited(text: &str, edits: &[(usize, u8, u8)]) -> String {
        let mut bytes = text.as_bytes().to_vec();
        for &(at, byte, how) in edits {
            let at = at.min(bytes.len().saturating_sub(1));
            match how {
                0 => bytes[at] = byte,
                1 => bytes.insert(at, byte),
                _ => {
                    bytes.remove(at);
                }
            }
        }
        String::from_utf8(bytes).expect("ASCII edits of ASCII text")
    }
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
    fn one_list_of_flat_objects_is_read_where_it_is_named() {
        let text = r#"{"devId":"d1","status":[{"code":"a","value":1},{}, {"t":2}],"x":null}"#;
        let (fields, items) = super::fields_with_list(text, "status").expect("read");
        let expected: super::Fields<'_> = vec![
            ("devId".into(), r#""d1""#),
            ("status".into(), r#"[{"code":"a","value":1},{}, {"t":2}]"#),
            ("x".into(), "null"),
        ];
        assert_eq!(fields, expected);
        assert_eq!(items.len(), 3);
        assert_eq!(
            items[0],
            vec![("code".into(), r#""a""#), ("value".into(), "1")]
        );
        assert!(items[1].is_empty());
        assert_eq!(items[2], vec![("t".into(), "2")]);
        for text in [
            r#"{"status":null}"#,
            r#"{"status":[1]}"#,
            r#"{"status":[{"a":[]}]}"#,
            r#"{"status":[],"status":[]}"#,
            r#"{"other":[{}]}"#,
            r#"{"status":[{}],}"#,
            r#"{"status":[{},]}"#,
        ] {
            assert_eq!(super::fields_with_list(text, "status"), None, "{text}");
        }
        assert_eq!(
            read(r#"{"status":[]}"#),
            None,
            "no list unless one is named"
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
