//! A quick reader for the common shapes of Tuya JSON: the envelope, one flat object of plain
//! strings, numbers, booleans and `null`; the protocol 4 status body, the same with one array
//! of such objects; and the Smart Business body, whose `data` object holds such an array.
//!
//! serde_json scans a string eight bytes at a time with three tests per word, and the
//! envelope's sealed field is hundreds of base64 characters; here a table ends short strings
//! and a vectorized `memchr2` long ones. Only a strict subset of JSON is read: any escape,
//! unusual number, stray byte, or nested value its reader did not ask for answers `None`, and
//! the caller reads the text with serde_json instead, whose error then names what is wrong.
//! So this never accepts what serde_json refuses, and where it answers, it answers what
//! serde_json's reading would (see the tests here, in `envelope` and in `normalize`).
//!
//! The read streams: each field goes to a [`Visit`] as it is met, so a body is read straight
//! into what its reader builds, with no list of fields in between.

use std::borrow::Cow;

/// An object's fields in order, each value as its raw JSON text.
pub(super) type Fields<'a> = Vec<(Cow<'a, str>, &'a str)>;

/// What a read does with each field of an object, in order.
pub(super) trait Visit<'a> {
    /// A field whose value is plain (a string without escapes, a number, `true`, `false` or
    /// `null`), given as its raw JSON text. `None` gives the text up to serde_json.
    fn plain(&mut self, key: &'a str, raw: &'a str) -> Option<()>;

    /// A field whose value opens an object or an array at `at` in `text`: reads it, with
    /// [`object`] or [`array`], and answers the index after it. `None`, unless a reader asks
    /// for the value, gives the text up.
    fn nested(&mut self, _key: &'a str, _text: &'a str, _at: usize) -> Option<usize> {
        None
    }
}

/// An object's fields collected in order; none may be nested.
impl<'a> Visit<'a> for Fields<'a> {
    fn plain(&mut self, key: &'a str, raw: &'a str) -> Option<()> {
        self.push((Cow::Borrowed(key), raw));
        Some(())
    }
}

/// The fields of a flat object of plain values; `None` for any other text.
pub(super) fn fields(text: &str) -> Option<Fields<'_>> {
    let mut fields = Vec::with_capacity(6);
    read(text, &mut fields)?;
    Some(fields)
}

/// Reads `text`, which must be one object and nothing else, with `visit`.
pub(super) fn read<'a>(text: &'a str, visit: &mut impl Visit<'a>) -> Option<()> {
    let bytes = text.as_bytes();
    let end = object(text, skip_space(bytes, 0), visit)?;
    (skip_space(bytes, end) == bytes.len()).then_some(())
}

/// Reads the object opening at `at` with `visit`: the index after it.
pub(super) fn object<'a>(
    text: &'a str,
    mut at: usize,
    visit: &mut impl Visit<'a>,
) -> Option<usize> {
    let bytes = text.as_bytes();
    if bytes.get(at) != Some(&b'{') {
        return None;
    }
    at = skip_space(bytes, at + 1);
    if bytes.get(at) == Some(&b'}') {
        return Some(at + 1);
    }
    loop {
        let key_end = string_end(bytes, at)?;
        let key = &text[at + 1..key_end - 1];
        at = skip_space(bytes, key_end);
        if bytes.get(at) != Some(&b':') {
            return None;
        }
        at = skip_space(bytes, at + 1);
        let value_end = match bytes.get(at)? {
            b'{' | b'[' => visit.nested(key, text, at)?,
            first => {
                let end = match first {
                    b'"' => string_end(bytes, at)?,
                    b'-' | b'0'..=b'9' => number_end(bytes, at)?,
                    b't' => literal_end(bytes, at, b"true")?,
                    b'f' => literal_end(bytes, at, b"false")?,
                    b'n' => literal_end(bytes, at, b"null")?,
                    _ => return None,
                };
                visit.plain(key, &text[at..end])?;
                end
            }
        };
        at = skip_space(bytes, value_end);
        match bytes.get(at)? {
            b',' => at = skip_space(bytes, at + 1),
            b'}' => return Some(at + 1),
            _ => return None,
        }
    }
}

/// Reads the array opening at `at`, each element with `element`, which is given the index
/// where the element starts and answers the index after it: the index after the array.
pub(super) fn array(
    text: &str,
    mut at: usize,
    mut element: impl FnMut(usize) -> Option<usize>,
) -> Option<usize> {
    let bytes = text.as_bytes();
    if bytes.get(at) != Some(&b'[') {
        return None;
    }
    at = skip_space(bytes, at + 1);
    if bytes.get(at) == Some(&b']') {
        return Some(at + 1);
    }
    loop {
        at = skip_space(bytes, element(at)?);
        match bytes.get(at)? {
            b',' => at = skip_space(bytes, at + 1),
            b']' => return Some(at + 1),
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
    use super::{Fields, Visit, array, fields, object};

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

    /// A reader that wants `status` as an array of flat objects, and every other field plain.
    #[derive(Default)]
    struct Listed<'a> {
        fields: Fields<'a>,
        items: Option<Vec<Fields<'a>>>,
    }

    impl<'a> Visit<'a> for Listed<'a> {
        fn plain(&mut self, key: &'a str, raw: &'a str) -> Option<()> {
            (key != "status").then(|| self.fields.push((key.into(), raw)))
        }

        fn nested(&mut self, key: &'a str, text: &'a str, at: usize) -> Option<usize> {
            if key != "status" || self.items.is_some() {
                return None;
            }
            let mut items = Vec::new();
            let end = array(text, at, |at| {
                let mut item = Vec::new();
                let end = object(text, at, &mut item)?;
                items.push(item);
                Some(end)
            })?;
            self.items = Some(items);
            Some(end)
        }
    }

    fn listed(text: &str) -> Option<Listed<'_>> {
        let mut listed = Listed::default();
        super::read(text, &mut listed)?;
        Some(listed)
    }

    #[test]
    fn a_nested_value_is_read_where_its_reader_asks_for_it() {
        let text = r#"{"devId":"d1","status":[{"code":"a","value":1},{}, {"t":2}],"x":null}"#;
        let Listed { fields, items } = listed(text).expect("read");
        let expected: Fields<'_> = vec![("devId".into(), r#""d1""#), ("x".into(), "null")];
        assert_eq!(fields, expected);
        let items = items.expect("the list was read");
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
            r#"{"status":{}}"#,
            r#"{"status":[{}],}"#,
            r#"{"status":[{},]}"#,
            r#"{"status":[{}}"#,
        ] {
            assert!(listed(text).is_none(), "{text}");
        }
        assert_eq!(
            read(r#"{"status":[]}"#),
            None,
            "no nested value unless its reader asks for it"
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
