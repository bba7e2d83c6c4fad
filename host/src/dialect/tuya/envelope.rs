//! Tuya's message envelopes: signature verification and decryption.
//!
//! Two envelopes travel over the same Pulsar service:
//! - IoT Core: `{"data","protocol","pv","sign","t"}`, encryption mode in the Pulsar message
//!   property `em` (`aes_gcm`; absent or `aes_ecb` means ECB), never in the JSON;
//! - Smart Business: `{"encryptPayload","encryptType","v","t","sign"}`, mode in `encryptType`.
//!
//! Both are signed the same way: every key but `sign`, empty values skipped, sorted, written
//! `k=v` joined by `||`, then `||` and the access key; `sign` is the lower-hex MD5 of that.
//! Values are taken exactly as written in the message (numbers as their JSON text), which is
//! why the envelope is read as raw JSON rather than through a typed struct.

use std::borrow::Cow;

use serde_json::value::RawValue;

use super::{Keys, flat};
use crate::dialect::crypto::{CipherError, constant_time_eq, md5_digest};
use crate::dialect::{
    DecodeError, LenientU64, RawObject, SignMode, base64_field, clip, unquote, utf8,
};

/// The JSON key of the signature.
const SIGN: &str = "sign";
/// The Pulsar message property that names the IoT Core encryption mode.
pub(crate) const ENCRYPTION_PROPERTY: &str = "em";

/// Which cipher mode sealed the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// AES-128-ECB with PKCS#7 padding.
    Ecb,
    /// AES-128-GCM, `nonce(12) || ciphertext || tag(16)`, no associated data.
    Gcm,
}

impl Mode {
    /// Reads a mode name as Tuya writes it; `None` (absent) means ECB.
    pub fn parse(name: Option<&str>, what: &'static str) -> Result<Mode, DecodeError> {
        match name {
            None | Some("aes_ecb") => Ok(Mode::Ecb),
            Some("aes_gcm") => Ok(Mode::Gcm),
            Some(other) => Err(DecodeError::unsupported(what, other)),
        }
    }

    /// The name as Tuya writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Ecb => "aes_ecb",
            Mode::Gcm => "aes_gcm",
        }
    }
}

/// What the signature check concluded, recorded on the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureCheck {
    /// The signature matches.
    Verified,
    /// It does not match (or is missing), and warn mode let the message through.
    Mismatch,
    /// Not checked (mode off).
    Unchecked,
}

impl SignatureCheck {
    /// The value of the event's `signature` attribute.
    pub fn as_str(self) -> &'static str {
        match self {
            SignatureCheck::Verified => "verified",
            SignatureCheck::Mismatch => "mismatch",
            SignatureCheck::Unchecked => "unchecked",
        }
    }
}

/// The envelope fields that normalization needs after decryption.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// `protocol` (IoT Core only): selects how the body is read.
    pub protocol: Option<u64>,
    /// `t`: when Tuya sent the message, Unix ms.
    pub time_ms: Option<u64>,
    /// `sign`, lower-cased: unique per message, so it doubles as a de-duplication id.
    pub sign: String,
    /// The outcome of the signature check.
    pub signature: SignatureCheck,
}

/// An envelope's top-level fields in message order, each value as its raw JSON text.
#[derive(Debug, PartialEq)]
struct Fields<'a>(Vec<(Cow<'a, str>, &'a str)>);

impl<'a> Fields<'a> {
    /// Reads the envelope: the usual flat object directly, anything else through serde_json.
    fn parse(payload: &'a [u8]) -> Result<Self, DecodeError> {
        let text = utf8("Tuya envelope", payload)?;
        match flat::fields(text) {
            Some(fields) => Ok(Fields(fields)),
            None => Self::parse_json(text),
        }
    }

    fn parse_json(text: &'a str) -> Result<Self, DecodeError> {
        serde_json::from_str(text)
            .map(|RawObject(fields)| Fields(fields))
            .map_err(|source| DecodeError::Json {
                what: "Tuya envelope",
                source,
            })
    }

    fn raw(&self, key: &str) -> Option<&'a str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// A string field, unescaped (base64 may arrive with `\/`).
    fn text(&self, key: &'static str) -> Result<Option<Cow<'a, str>>, DecodeError> {
        self.raw(key)
            .map(|raw| {
                unquote(raw).ok_or_else(|| {
                    DecodeError::shape("Tuya envelope", format!("`{key}` is not a string"))
                })
            })
            .transpose()
    }

    fn number(&self, key: &'static str) -> Result<Option<u64>, DecodeError> {
        let Some(raw) = self.raw(key) else {
            return Ok(None);
        };
        LenientU64::from_raw(raw).map(Some).ok_or_else(|| {
            DecodeError::shape("Tuya envelope", format!("`{key}` is not a whole number"))
        })
    }

    /// Checks `sign` per `mode`; an error only in enforce mode.
    fn check_signature(
        &self,
        access_key: &str,
        mode: SignMode,
    ) -> Result<(String, SignatureCheck), DecodeError> {
        let sign = self
            .text(SIGN)?
            .map(|s| s.to_ascii_lowercase())
            .unwrap_or_default();
        if mode == SignMode::Off {
            return Ok((sign, SignatureCheck::Unchecked));
        }
        let problem = if sign.is_empty() {
            Some("the envelope has no `sign`")
        } else if !hex_matches(&self.signature_digest(access_key)?, &sign) {
            Some(
                "`sign` does not match the envelope signed with the configured access key (wrong key, or the message was altered)",
            )
        } else {
            None
        };
        match (problem, mode) {
            (None, _) => Ok((sign, SignatureCheck::Verified)),
            (Some(problem), SignMode::Enforce) => Err(DecodeError::Signature { problem }),
            (Some(_), _) => Ok((sign, SignatureCheck::Mismatch)),
        }
    }

    /// MD5 of `k=v||…||k=v||accessKey` over the sorted, non-empty fields other than `sign`.
    fn signature_digest(&self, access_key: &str) -> Result<[u8; 16], DecodeError> {
        let mut signed: Vec<(&str, Cow<'a, str>)> = Vec::with_capacity(self.0.len());
        for (key, raw) in &self.0 {
            if key == SIGN {
                continue;
            }
            let value: Cow<'a, str> = if raw.starts_with('"') {
                unquote(raw).ok_or_else(|| {
                    DecodeError::shape(
                        "Tuya envelope",
                        format!("`{}` is not a valid string", clip(key)),
                    )
                })?
            } else if *raw == "null" {
                continue;
            } else {
                Cow::Borrowed(*raw)
            };
            if !value.is_empty() {
                signed.push((key, value));
            }
        }
        signed.sort_unstable_by(|a, b| a.0.cmp(b.0));
        // One buffer and one digest call: feeding MD5 twenty small pieces costs more than
        // the copy.
        let len = signed
            .iter()
            .map(|(k, v)| k.len() + v.len() + 3)
            .sum::<usize>()
            + access_key.len();
        let mut text = Vec::with_capacity(len);
        for (key, value) in &signed {
            text.extend_from_slice(key.as_bytes());
            text.push(b'=');
            text.extend_from_slice(value.as_bytes());
            text.extend_from_slice(b"||");
        }
        text.extend_from_slice(access_key.as_bytes());
        Ok(md5_digest(&text))
    }
}

/// Whether `sign` is the lower-hex text of `digest`: the digest is written out and the texts
/// compared, which costs less than reading the hex.
fn hex_matches(digest: &[u8; 16], sign: &str) -> bool {
    let mut expected = [0u8; 32];
    hex::encode_to_slice(digest, &mut expected).is_ok()
        && constant_time_eq(&expected, sign.as_bytes())
}

/// Base64-decodes and decrypts a sealed field.
fn open(
    keys: &Keys,
    field: &'static str,
    sealed: &str,
    mode: Mode,
) -> Result<Vec<u8>, DecodeError> {
    let mut bytes = base64_field(field, sealed)?;
    let failed = |source: CipherError| DecodeError::Decrypt {
        field,
        mode: mode.as_str(),
        source,
    };
    match mode {
        Mode::Ecb => {
            let len = keys.cipher.decrypt_ecb_pkcs7(&mut bytes).map_err(failed)?;
            bytes.truncate(len);
            Ok(bytes)
        }
        Mode::Gcm => {
            keys.cipher.decrypt_gcm(&mut bytes).map_err(failed)?;
            Ok(bytes)
        }
    }
}

/// Verifies and decrypts an IoT Core envelope; `em` is the message's encryption property.
pub(crate) fn open_iot_core(
    keys: &Keys,
    sign_mode: SignMode,
    payload: &[u8],
    em: Option<&str>,
) -> Result<(Envelope, Vec<u8>), DecodeError> {
    let fields = Fields::parse(payload)?;
    let (sign, signature) = fields.check_signature(keys.access_key(), sign_mode)?;
    let mode = Mode::parse(em, "encryption mode (Pulsar property `em`)")?;
    let data = fields
        .text("data")?
        .ok_or_else(|| DecodeError::shape("Tuya envelope", "missing `data`"))?;
    let body = open(keys, "data", &data, mode)?;
    let envelope = Envelope {
        protocol: fields.number("protocol")?,
        time_ms: fields.number("t")?,
        sign,
        signature,
    };
    Ok((envelope, body))
}

/// Verifies and decrypts a Smart Business envelope.
pub(crate) fn open_business(
    keys: &Keys,
    sign_mode: SignMode,
    payload: &[u8],
) -> Result<(Envelope, Vec<u8>), DecodeError> {
    let fields = Fields::parse(payload)?;
    let (sign, signature) = fields.check_signature(keys.access_key(), sign_mode)?;
    let mode = Mode::parse(
        fields.text("encryptType")?.as_deref(),
        "encryption type (`encryptType`)",
    )?;
    let sealed = fields
        .text("encryptPayload")?
        .ok_or_else(|| DecodeError::shape("Tuya business envelope", "missing `encryptPayload`"))?;
    let body = open(keys, "encryptPayload", &sealed, mode)?;
    let envelope = Envelope {
        protocol: None,
        time_ms: fields.number("t")?,
        sign,
        signature,
    };
    Ok((envelope, body))
}

/// Computes the `sign` for envelope fields given as `(key, raw JSON value)` pairs: used to
/// seal demo and test messages exactly as Tuya does.
pub(crate) fn sign_fields(
    access_key: &str,
    fields: &[(&str, &str)],
) -> Result<String, DecodeError> {
    let raws: Vec<(Cow<'_, str>, Box<RawValue>)> = fields
        .iter()
        .map(|(k, v)| {
            RawValue::from_string((*v).to_owned())
                .map(|raw| (Cow::Borrowed(*k), raw))
                .map_err(|source| DecodeError::Json {
                    what: "envelope field",
                    source,
                })
        })
        .collect::<Result<_, _>>()?;
    let borrowed = Fields(raws.iter().map(|(k, v)| (k.clone(), v.get())).collect());
    Ok(hex::encode(borrowed.signature_digest(access_key)?))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{Fields, SignMode, SignatureCheck, flat, sign_fields};

    /// An IoT Core envelope as Tuya writes it.
    const ENVELOPE: &str =
        r#"{"data":"q83vEjRWeJA+/=","protocol":4,"pv":"2.0","sign":"0123abcd","t":1631545543537}"#;

    #[test]
    fn the_usual_envelope_is_read_directly_to_what_serde_json_reads() {
        let quick = flat::fields(ENVELOPE).expect("a plain flat object");
        assert_eq!(Fields(quick), Fields::parse_json(ENVELOPE).expect("valid"));
    }

    #[test]
    fn the_sign_matches_in_either_case_and_only_as_the_whole_digest() {
        let key = "benchKEY0123456789abcdefghijklmn";
        let sign = sign_fields(key, &[("data", r#""q83v""#), ("protocol", "4"), ("t", "1")])
            .expect("signed");
        let check = |sign: &str| {
            let text = format!(r#"{{"data":"q83v","protocol":4,"t":1,"sign":"{sign}"}}"#);
            let fields = Fields::parse(text.as_bytes()).expect("valid");
            fields
                .check_signature(key, SignMode::Warn)
                .expect("warn mode")
                .1
        };
        assert_eq!(check(&sign), SignatureCheck::Verified);
        assert_eq!(check(&sign.to_ascii_uppercase()), SignatureCheck::Verified);
        assert_eq!(
            check(&sign[..31]),
            SignatureCheck::Mismatch,
            "one digit short"
        );
        assert_eq!(
            check(&format!("{sign}0")),
            SignatureCheck::Mismatch,
            "one digit long"
        );
        let not_hex = format!("g{}", &sign[1..]);
        assert_eq!(check(&not_hex), SignatureCheck::Mismatch, "not hex");
    }

    proptest! {
        /// Envelopes with a few bytes replaced, inserted or removed: wherever the quick
        /// reader answers, serde_json reads the text to the same fields, so it never accepts
        /// what serde_json refuses nor reads a value differently.
        #[test]
        fn the_quick_reader_answers_only_what_serde_json_reads_the_same(
            edits in flat::testing::edits(ENVELOPE.len())
        ) {
            let text = &flat::testing::edited(ENVELOPE, &edits);
            if let Some(quick) = flat::fields(text) {
                prop_assert_eq!(Some(Fields(quick)), Fields::parse_json(text).ok(), "{}", text);
            }
        }
    }
}
