//! Vendor dialects: everything the clouds' formats require, as pure code with no I/O.
//!
//! Each vendor module knows its credentials (usernames, passwords, signatures), its envelopes
//! (verification and decryption), its topics, and how its payloads become [`Event`]s and
//! commands become wire messages. Connectors only move bytes; they hand each delivery to a
//! [`Dialect`] as a [`RawMessage`] and get an [`Event`] or a [`DecodeError`] back.
//!
//! Decoding never panics on input and never puts key material in an error.

pub mod alibaba;
pub mod crypto;
pub mod huawei;
pub mod json;
pub mod tuya;

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::event::{ATTR_CONTENT, Event, Json};

/// A message as a connector received it: the body and the transport's properties (Pulsar
/// message properties such as `em`, AMQP application properties such as `topic`, or the MQTT
/// topic under the key `topic`).
#[derive(Debug, Clone, Copy)]
pub struct RawMessage<'a> {
    /// The connector's configured name, copied into [`Event::source`].
    pub source: &'a str,
    /// The message body as received.
    pub payload: &'a [u8],
    /// Transport properties, in the order received.
    pub properties: &'a [(String, String)],
}

impl<'a> RawMessage<'a> {
    /// A message with no transport properties.
    pub fn new(source: &'a str, payload: &'a [u8]) -> Self {
        RawMessage {
            source,
            payload,
            properties: &[],
        }
    }

    /// Adds transport properties.
    pub fn with_properties(mut self, properties: &'a [(String, String)]) -> Self {
        self.properties = properties;
        self
    }

    /// The first property with this key.
    pub fn property(&self, key: &str) -> Option<&'a str> {
        self.properties
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// How to treat an envelope signature that does not match.
///
/// Tuya's envelope signature is documented but no official SDK checks it and it is unconfirmed
/// against live traffic, so operators can relax it without patching.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignMode {
    /// Refuse the message with [`DecodeError::Signature`].
    #[default]
    Enforce,
    /// Accept it, marking the event's `signature` attribute `mismatch`.
    Warn,
    /// Do not check.
    Off,
}

impl SignMode {
    /// The name configs and `/status` use.
    pub fn as_str(self) -> &'static str {
        match self {
            SignMode::Enforce => "enforce",
            SignMode::Warn => "warn",
            SignMode::Off => "off",
        }
    }
}

impl std::str::FromStr for SignMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "enforce" => Ok(SignMode::Enforce),
            "warn" => Ok(SignMode::Warn),
            "off" => Ok(SignMode::Off),
            _ => Err(format!(
                "unknown sign mode `{s}`: expected enforce, warn or off"
            )),
        }
    }
}

/// The class of a decoding failure, for metrics, dead-letter records and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorKind {
    /// The envelope's signature does not match its content.
    Signature,
    /// A field that must be base64 is not.
    Base64,
    /// The ciphertext could not be decrypted (length, padding, authentication tag).
    Decrypt,
    /// The message or its decrypted body is not JSON, or not the JSON shape the vendor documents.
    Json,
    /// The message uses something this version does not support (an unknown encryption mode).
    Unsupported,
}

impl ErrorKind {
    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Signature => "signature",
            ErrorKind::Base64 => "base64",
            ErrorKind::Decrypt => "decrypt",
            ErrorKind::Json => "json",
            ErrorKind::Unsupported => "unsupported",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a message could not be decoded. Every message names the field or property at fault;
/// none contains key material.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("signature check failed: {problem}")]
    Signature { problem: &'static str },
    #[error("`{field}` is not valid base64: {source}")]
    Base64 {
        field: &'static str,
        source: base64::DecodeError,
    },
    #[error("cannot decrypt `{field}` with {mode}: {source}")]
    Decrypt {
        field: &'static str,
        mode: &'static str,
        source: crypto::CipherError,
    },
    #[error("{what} is not valid JSON: {source}")]
    Json {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("{what}: {problem}")]
    Shape { what: &'static str, problem: String },
    #[error("unsupported {what} `{value}`")]
    Unsupported { what: &'static str, value: String },
}

impl DecodeError {
    /// The failure's class.
    pub fn kind(&self) -> ErrorKind {
        match self {
            DecodeError::Signature { .. } => ErrorKind::Signature,
            DecodeError::Base64 { .. } => ErrorKind::Base64,
            DecodeError::Decrypt { .. } => ErrorKind::Decrypt,
            DecodeError::Json { .. } | DecodeError::Shape { .. } => ErrorKind::Json,
            DecodeError::Unsupported { .. } => ErrorKind::Unsupported,
        }
    }

    /// A shape error: `what` names the message part, `problem` says what is wrong with it.
    pub(crate) fn shape(what: &'static str, problem: impl Into<String>) -> Self {
        DecodeError::Shape {
            what,
            problem: problem.into(),
        }
    }

    /// An unsupported value, clipped so a hostile message cannot flood logs.
    pub fn unsupported(what: &'static str, value: &str) -> Self {
        DecodeError::Unsupported {
            what,
            value: clip(value),
        }
    }
}

/// A problem with the configuration a dialect was built from (a key of the wrong length).
/// Never contains the secret itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(pub String);

/// Cuts untrusted text to a length fit for an error message.
/// A JSON object of named values kept in the order sent, each value read as `T` (Huawei's
/// `properties`, `paras` and `serviceData`; Alibaba's `items` and `params`). `null` reads as
/// empty. A visitor, so values go straight into `T` without an intermediate tree.
#[derive(Debug)]
pub(crate) struct Named<T>(pub Vec<(String, T)>);

impl<T> Default for Named<T> {
    fn default() -> Self {
        Named(Vec::new())
    }
}

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Named<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct NamedVisitor<T>(std::marker::PhantomData<T>);

        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for NamedVisitor<T> {
            type Value = Named<T>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of named values")
            }
            fn visit_unit<E>(self) -> Result<Named<T>, E> {
                Ok(Named::default())
            }
            fn visit_none<E>(self) -> Result<Named<T>, E> {
                Ok(Named::default())
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Named<T>, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
                while let Some(entry) = map.next_entry::<String, T>()? {
                    entries.push(entry);
                }
                Ok(Named(entries))
            }
        }

        d.deserialize_any(NamedVisitor(std::marker::PhantomData))
    }
}

/// True if `text` can be one level of an MQTT topic (no `/`, wildcard or NUL).
pub(crate) fn topic_segment(text: &str) -> bool {
    !text.is_empty() && !text.contains(['/', '+', '#', '\0'])
}

/// A command's params as JSON, for the encodings that read fields of them.
pub(crate) fn command_params(command: &crate::event::Command) -> Result<serde_json::Value, String> {
    serde_json::from_str(command.params.as_str())
        .map_err(|e| format!("the params are not JSON: {e}"))
}

/// A field of a command's params as JSON text.
pub(crate) fn json_field(params: &serde_json::Value, key: &str) -> Option<crate::event::Json> {
    params.get(key).map(crate::event::Json::from_serializable)
}

pub(crate) fn clip(text: &str) -> String {
    const MAX: usize = 64;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Decodes standard base64, naming the field on failure.
///
/// The SIMD decoder does the work (a third of the cost of the scalar one on a sealed Tuya
/// body); the scalar decoder runs only on failure, to say which byte at which offset is bad.
pub(crate) fn base64_field(field: &'static str, text: &str) -> Result<Vec<u8>, DecodeError> {
    base64_simd::STANDARD.decode_to_vec(text).or_else(|_| {
        BASE64
            .decode(text)
            .map_err(|source| DecodeError::Base64 { field, source })
    })
}

/// Standard base64 encoding.
pub fn base64_encode(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

/// Parses a message part as JSON into `T`, naming the part on failure.
pub(crate) fn parse_json<'a, T: serde::Deserialize<'a>>(
    what: &'static str,
    bytes: &'a [u8],
) -> Result<T, DecodeError> {
    serde_json::from_slice(bytes).map_err(|source| {
        json_error(what, source, || {
            error_path::<T>(&mut serde_json::Deserializer::from_slice(bytes))
        })
    })
}

/// [`parse_json`] for text already known to be UTF-8: faster on the hot path, because
/// serde_json then skips checking each string on its own.
pub(crate) fn parse_json_str<'a, T: serde::Deserialize<'a>>(
    what: &'static str,
    text: &'a str,
) -> Result<T, DecodeError> {
    serde_json::from_str(text).map_err(|source| {
        json_error(what, source, || {
            error_path::<T>(&mut serde_json::Deserializer::from_str(text))
        })
    })
}

/// Checks that a message part is UTF-8 text, as JSON must be.
pub(crate) fn utf8<'a>(what: &'static str, bytes: &'a [u8]) -> Result<&'a str, DecodeError> {
    std::str::from_utf8(bytes).map_err(|e| {
        DecodeError::shape(
            what,
            format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.valid_up_to()
            ),
        )
    })
}

/// Syntax errors are `Json`; well-formed JSON of the wrong shape is `Shape`. Both are of
/// kind json.
///
/// A shape error names the field by its path and says what was expected, never the value
/// found: serde's own message quotes it (`invalid type: string "21.5", expected f64`), and
/// after decryption that value is the device's data, which would otherwise reach the log,
/// `/status` and the dead letter's message. `path` finds the field (by parsing once more:
/// errors are rare, and tracking the path on every message would slow the hot path).
fn json_error(
    what: &'static str,
    source: serde_json::Error,
    path: impl FnOnce() -> Option<String>,
) -> DecodeError {
    if !source.is_data() {
        return DecodeError::Json { what, source };
    }
    let full = source.to_string();
    let message = full
        .rfind(" at line ")
        .map_or(full.as_str(), |at| &full[..at]);
    let place = match path() {
        Some(path) if path != "." => format!("`{path}`: "),
        _ => String::new(),
    };
    DecodeError::shape(
        what,
        format!(
            "{place}{} (line {}, column {})",
            without_values(message),
            source.line(),
            source.column()
        ),
    )
}

/// Where in the document deserializing `T` fails, as a dotted path (`status[0].value`).
fn error_path<'de, T: serde::Deserialize<'de>>(
    deserializer: &mut serde_json::Deserializer<impl serde_json::de::Read<'de>>,
) -> Option<String> {
    serde_path_to_error::deserialize::<_, T>(deserializer)
        .err()
        .map(|error| error.path().to_string())
}

/// A serde message without the values it quotes: `invalid type: string "x", expected f64`
/// becomes `invalid type: string, expected f64`. What follows `, expected` describes the
/// type, not the data, and is kept; so are the field names of `missing field`, `unknown
/// field` and `duplicate field` (keys, not values).
fn without_values(message: &str) -> String {
    let (found, expected) = match message.find(", expected") {
        Some(at) => message.split_at(at),
        None => (message, ""),
    };
    let keeps_names = ["missing field", "unknown field", "duplicate field"]
        .iter()
        .any(|start| found.starts_with(start));
    if keeps_names {
        return message.to_owned();
    }
    let mut out = String::with_capacity(found.len() + expected.len());
    let mut quote = None;
    let mut escaped = false;
    for c in found.chars() {
        match quote {
            // A string is quoted with Rust's escapes (`\"` inside): skip what they escape.
            Some(_) if escaped => escaped = false,
            Some('"') if c == '\\' => escaped = true,
            Some(open) if c == open => quote = None,
            Some(_) => {}
            None if c == '"' || c == '`' => {
                quote = Some(c);
                if out.ends_with(' ') {
                    out.pop();
                }
            }
            None => out.push(c),
        }
    }
    out.push_str(expected);
    out
}

/// Keeps a body as the event payload: JSON verbatim; other bodies (custom topics may carry
/// anything) as a JSON string of the UTF-8 text, or of its base64 when binary, with the
/// [`ATTR_CONTENT`] attribute saying which.
pub(crate) fn body_as_payload(body: &[u8], event: &mut Event) {
    if let Ok(text) = std::str::from_utf8(body) {
        if let Ok(json) = Json::from_text(text.to_owned()) {
            event.payload = json;
            return;
        }
        event.payload = Json::string(text);
        event.attributes.insert(ATTR_CONTENT.into(), "text".into());
    } else {
        event.payload = Json::string(&base64_encode(body));
        event
            .attributes
            .insert(ATTR_CONTENT.into(), "base64".into());
    }
}

/// A fresh random id for one received message that carries no id of its vendor's: the same
/// bytes received again are a new message (a second button press, a downlink sent twice),
/// not a duplicate to drop. A transport's redelivery of it is then processed again, which is
/// the safe side: at least once.
pub(crate) fn receipt_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// A stable id for a message that carries none of its own: the hex MD5 of its bytes, so a
/// redelivery of the same message gets the same id.
pub(crate) fn digest_id(bytes: &[u8]) -> String {
    crypto::md5_hex(&[bytes])
}

/// A JSON string borrowed from the input when it has no escapes. (serde's own `Cow<str>`
/// always allocates unless a derive marks the field `borrow`, which hand-written visitors
/// cannot.)
#[derive(Debug)]
pub(crate) struct CowStr<'a>(pub Cow<'a, str>);

impl std::ops::Deref for CowStr<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for CowStr<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct CowVisitor;

        impl<'de> serde::de::Visitor<'de> for CowVisitor {
            type Value = CowStr<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(s)))
            }
        }

        d.deserialize_str(CowVisitor)
    }
}

/// A JSON object read one level deep: its fields in message order, each value as its raw
/// JSON text. For reading a few fields of a message without building a tree of all of it;
/// the text was checked as JSON when it was read, so a value read again is well-formed.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct RawObject<'a>(pub Vec<(Cow<'a, str>, &'a str)>);

impl<'a> RawObject<'a> {
    /// A raw value read as an object; `None` when it is another kind of value.
    pub fn of(raw: &'a str) -> Option<Self> {
        raw.starts_with('{')
            .then(|| serde_json::from_str(raw).ok())
            .flatten()
    }

    /// The raw value of `key`: the last one when the key repeats, as a tree keeps it.
    pub(crate) fn get(&self, key: &str) -> Option<&'a str> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// The text of `key` when its value is a string.
    pub fn text(&self, key: &str) -> Option<Cow<'a, str>> {
        self.get(key).and_then(unquote)
    }
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for RawObject<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;

        impl<'de> serde::de::Visitor<'de> for ObjectVisitor {
            type Value = RawObject<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(6));
                while let Some((key, value)) =
                    map.next_entry::<CowStr<'de>, &'de serde_json::value::RawValue>()?
                {
                    fields.push((key.0, value.get()));
                }
                Ok(RawObject(fields))
            }
        }

        deserializer.deserialize_map(ObjectVisitor)
    }
}

/// A raw value read as an array of raw values; `None` when it is another kind of value.
pub(crate) fn raw_array(raw: &str) -> Option<Vec<&str>> {
    let items: Vec<&serde_json::value::RawValue> = raw
        .starts_with('[')
        .then(|| serde_json::from_str(raw).ok())
        .flatten()?;
    Some(
        items
            .into_iter()
            .map(serde_json::value::RawValue::get)
            .collect(),
    )
}

/// The text of a raw JSON string value; `None` for any other value. A string without
/// escapes (the usual case, even for long base64) is sliced, not parsed again.
pub(crate) fn unquote(raw: &str) -> Option<Cow<'_, str>> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    if memchr::memchr(b'\\', inner.as_bytes()).is_some() {
        serde_json::from_str(raw).ok()
    } else {
        Some(Cow::Borrowed(inner))
    }
}

/// A number that a vendor writes either as a JSON number or as a string of digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct LenientU64(pub Option<u64>);

impl<'de> serde::Deserialize<'de> for LenientU64 {
    /// A visitor, not an untagged enum: untagged enums buffer their input, and this runs for
    /// every datapoint time.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct NumberVisitor;

        impl<'de> serde::de::Visitor<'de> for NumberVisitor {
            type Value = LenientU64;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number or a string of digits")
            }
            fn visit_u64<E>(self, n: u64) -> Result<LenientU64, E> {
                Ok(LenientU64(Some(n)))
            }
            fn visit_i64<E>(self, n: i64) -> Result<LenientU64, E> {
                Ok(LenientU64(u64::try_from(n).ok()))
            }
            fn visit_f64<E>(self, f: f64) -> Result<LenientU64, E> {
                Ok(LenientU64((f.is_finite() && f >= 0.0).then_some(f as u64)))
            }
            fn visit_str<E>(self, s: &str) -> Result<LenientU64, E> {
                Ok(LenientU64(s.trim().parse().ok()))
            }
            fn visit_bool<E>(self, _: bool) -> Result<LenientU64, E> {
                Ok(LenientU64(None))
            }
            fn visit_unit<E>(self) -> Result<LenientU64, E> {
                Ok(LenientU64(None))
            }
            fn visit_none<E>(self) -> Result<LenientU64, E> {
                Ok(LenientU64(None))
            }
            fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<LenientU64, D::Error> {
                <LenientU64 as serde::Deserialize>::deserialize(d)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<LenientU64, A::Error> {
                skip_seq(seq)?;
                Ok(LenientU64(None))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<LenientU64, A::Error> {
                skip_map(map)?;
                Ok(LenientU64(None))
            }
        }

        d.deserialize_any(NumberVisitor)
    }
}

/// Reads the rest of a JSON array a visitor does not keep.
pub(crate) fn skip_seq<'de, A: serde::de::SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
    Ok(())
}

/// Reads the rest of a JSON object a visitor does not keep.
pub(crate) fn skip_map<'de, A: serde::de::MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map
        .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
        .is_some()
    {}
    Ok(())
}

impl LenientU64 {
    /// Reads a raw JSON value: plain digits (the usual case) directly, anything else (a
    /// quoted number, a float) through the lenient reader.
    pub(crate) fn from_raw(text: &str) -> Option<u64> {
        text.parse::<u64>()
            .ok()
            .or_else(|| serde_json::from_str::<LenientU64>(text).ok()?.0)
    }
}

/// The dialects by name, as configs, rule tests and `iotrules decode --vendor` write them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DialectName {
    /// Tuya message service (Pulsar), IoT Core envelope.
    Tuya,
    /// Tuya Smart Business Platform envelope.
    TuyaBusiness,
    /// Alibaba Cloud IoT.
    Alibaba,
    /// Huawei Cloud IoTDA.
    Huawei,
    /// Plain JSON on any broker, the device taken from the topic (`mqtt` links).
    Json,
}

impl DialectName {
    const ALL: [DialectName; 5] = [
        DialectName::Tuya,
        DialectName::TuyaBusiness,
        DialectName::Alibaba,
        DialectName::Huawei,
        DialectName::Json,
    ];

    /// The name as written.
    pub fn as_str(self) -> &'static str {
        match self {
            DialectName::Tuya => "tuya",
            DialectName::TuyaBusiness => "tuya-business",
            DialectName::Alibaba => "alibaba",
            DialectName::Huawei => "huawei",
            DialectName::Json => "json",
        }
    }

    /// The dialect of this name: `sign` is the Tuya dialects' signature policy,
    /// `body_base64` Alibaba's base64 bodies; `keys` is asked for by the Tuya dialects only,
    /// `template` (where the device is in the topic) by the JSON dialect only.
    pub fn build<E>(
        self,
        sign: SignMode,
        body_base64: bool,
        keys: impl FnOnce() -> Result<tuya::Keys, E>,
        template: impl FnOnce() -> Result<json::TopicTemplate, E>,
    ) -> Result<Dialect, E> {
        Ok(match self {
            DialectName::Tuya => Dialect::Tuya(tuya::Decoder::new(keys()?, sign)),
            DialectName::TuyaBusiness => {
                Dialect::TuyaBusiness(tuya::BusinessDecoder::new(keys()?, sign))
            }
            DialectName::Alibaba => Dialect::Alibaba(alibaba::Decoder::new(body_base64)),
            DialectName::Huawei => Dialect::Huawei(huawei::Decoder::new()),
            DialectName::Json => Dialect::Json(json::Decoder::new(template()?)),
        })
    }
}

impl std::str::FromStr for DialectName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DialectName::ALL
            .into_iter()
            .find(|name| name.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown dialect `{s}`: expected tuya, tuya-business, alibaba, huawei or json"
                )
            })
    }
}

/// Decodes messages of one vendor dialect into events.
///
/// One per connector, built from its configuration (keys are expanded once here, not per
/// message).
#[derive(Clone)]
pub enum Dialect {
    /// Tuya message service, IoT Core envelope (`data`, `protocol`, `pv`, `sign`, `t`).
    Tuya(tuya::Decoder),
    /// Tuya Smart Business Platform envelope (`encryptPayload`, `encryptType`, `v`, `t`, `sign`).
    TuyaBusiness(tuya::BusinessDecoder),
    /// Alibaba Cloud IoT: AMQP subscription bodies and device-side MQTT topics.
    Alibaba(alibaba::Decoder),
    /// Huawei Cloud IoTDA: AMQP push bodies and device-side MQTT topics.
    Huawei(huawei::Decoder),
    /// Plain JSON on any MQTT broker, the device from the topic.
    Json(json::Decoder),
}

impl Dialect {
    /// The dialect's name, as configs, dead letters and `/status` write it.
    pub fn name(&self) -> &'static str {
        self.kind().as_str()
    }

    /// Which dialect it is.
    pub fn kind(&self) -> DialectName {
        match self {
            Dialect::Tuya(_) => DialectName::Tuya,
            Dialect::TuyaBusiness(_) => DialectName::TuyaBusiness,
            Dialect::Alibaba(_) => DialectName::Alibaba,
            Dialect::Huawei(_) => DialectName::Huawei,
            Dialect::Json(_) => DialectName::Json,
        }
    }

    /// How the dialect treats a signature that does not match; `None` for the dialects
    /// whose messages carry no signature.
    pub fn sign_mode(&self) -> Option<SignMode> {
        match self {
            Dialect::Tuya(d) => Some(d.sign_mode()),
            Dialect::TuyaBusiness(d) => Some(d.sign_mode()),
            Dialect::Alibaba(_) | Dialect::Huawei(_) | Dialect::Json(_) => None,
        }
    }

    /// Whether a message sent again gets the same event id. A plain JSON message carries
    /// nothing that identifies it, so each receipt gets a fresh id: no copy can be found by
    /// it, and the pipeline does not keep those ids for de-duplication.
    pub(crate) fn ids_identify_messages(&self) -> bool {
        !matches!(self, Dialect::Json(_))
    }

    /// Verifies, decrypts and normalizes one message.
    pub fn decode(&self, message: &RawMessage<'_>) -> Result<Event, DecodeError> {
        match self {
            Dialect::Tuya(d) => d.decode(message),
            Dialect::TuyaBusiness(d) => d.decode(message),
            Dialect::Alibaba(d) => d.decode(message),
            Dialect::Huawei(d) => d.decode(message),
            Dialect::Json(d) => d.decode(message),
        }
    }

    /// Verifies and decrypts one message and returns the vendor's body as it was sent,
    /// without normalizing it (`iotrules decode --raw`).
    pub fn decrypt(&self, message: &RawMessage<'_>) -> Result<Vec<u8>, DecodeError> {
        match self {
            Dialect::Tuya(d) => d.decrypt(message).map(|(_, body)| body),
            Dialect::TuyaBusiness(d) => d.decrypt(message).map(|(_, body)| body),
            Dialect::Alibaba(d) => d.decrypt(message),
            Dialect::Huawei(_) | Dialect::Json(_) => Ok(message.payload.to_vec()),
        }
    }
}

/// Generators for the dialects' property tests.
#[cfg(test)]
pub(crate) mod test_strategies {
    use proptest::prelude::*;

    /// JSON shaped like a vendor's bodies: objects with the vendor's `keys`, holding values
    /// of any kind (among them the vendor's `words`), so the right keys hold wrong kinds of
    /// values.
    pub(crate) fn json_like(
        keys: &'static [&'static str],
        words: &'static [&'static str],
    ) -> impl Strategy<Value = serde_json::Value> {
        let keys = proptest::sample::select(keys);
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            proptest::sample::select(words).prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                proptest::collection::vec((keys.clone(), inner), 0..6).prop_map(|kv| {
                    serde_json::Value::Object(
                        kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
                    )
                }),
            ]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dialect_name_reads_as_it_is_written_and_an_unknown_one_is_named() {
        for name in DialectName::ALL {
            assert_eq!(name.as_str().parse::<DialectName>(), Ok(name));
        }
        assert_eq!(
            "tuya-cloud".parse::<DialectName>(),
            Err(
                "unknown dialect `tuya-cloud`: expected tuya, tuya-business, alibaba, huawei or \
                 json"
                    .to_owned()
            )
        );
    }

    #[test]
    fn a_shape_error_names_the_field_and_expected_type_but_not_the_value() {
        #[derive(Debug, serde::Deserialize)]
        struct Reading {
            #[serde(rename = "status")]
            _status: Vec<Point>,
        }
        #[derive(Debug, serde::Deserialize)]
        struct Point {
            #[serde(rename = "t")]
            _t: u64,
        }
        let text = r#"{"status":[{"t":1},{"t":"pin \"4711\" 21.5"}]}"#;
        let error = parse_json_str::<Reading>("body", text)
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("body: `status[1].t`: invalid type: string, expected u64 (line 1,"),
            "{error}"
        );
        let error = parse_json::<Reading>("body", text.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(error.contains("`status[1].t`"), "{error}");
        assert!(
            !error.contains("4711") && !error.contains("21.5"),
            "{error}"
        );
        let missing = parse_json_str::<Reading>("body", r#"{"status":[{}]}"#)
            .unwrap_err()
            .to_string();
        assert!(missing.contains("missing field `t`"), "{missing}");
    }

    #[test]
    fn a_huawei_push_of_the_wrong_shape_is_refused_without_its_values() {
        let body =
            r#"{"resource":"device.property","event":"report","notify_data":"meter-secret-0042"}"#;
        let error = huawei::Decoder::new()
            .decode(&RawMessage::new("h", body.as_bytes()))
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Json);
        let message = error.to_string();
        assert!(message.contains("`notify_data`"), "{message}");
        assert!(
            message.contains("invalid type: string, expected"),
            "{message}"
        );
        assert!(!message.contains("meter-secret-0042"), "{message}");
    }

    #[test]
    fn clip_cuts_long_text_on_a_char_boundary() {
        assert_eq!(clip("aes_cbc"), "aes_cbc");
        let long = "ü".repeat(100);
        let clipped = clip(&long);
        assert_eq!(clipped.chars().count(), 65);
        assert!(clipped.ends_with('…'));
    }

    #[test]
    fn lenient_numbers_accept_numbers_and_digit_strings() {
        let parse = |s: &str| serde_json::from_str::<LenientU64>(s).unwrap().0;
        assert_eq!(parse("1631545543500"), Some(1631545543500));
        assert_eq!(parse("\"1631545543500\""), Some(1631545543500));
        assert_eq!(parse("12.0"), Some(12));
        assert_eq!(parse("\"soon\""), None);
        assert_eq!(parse("null"), None);
        assert_eq!(parse("{}"), None);
        assert_eq!(parse("-5"), None);
    }
}
