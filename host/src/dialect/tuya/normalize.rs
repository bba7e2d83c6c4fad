//! Decrypted Tuya bodies → [`Event`].
//!
//! Protocol 4 (device status) is by far the most frequent message, so it is read through
//! borrowed, typed structs; everything else through a JSON tree, leniently, because Tuya adds
//! keys and business codes at any time. Unknown business codes become [`Kind::Other`], never
//! errors, and the body is always kept verbatim in the payload.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value as Tree;
use serde_json::value::RawValue;

use super::{Envelope, flat};
use crate::dialect::{
    CowStr, DecodeError, LenientU64, RawObject, digest_id, parse_json_str, raw_array, unquote,
};
use crate::event::{ATTR_BIZ_CODE, Device, Event, Json, Kind, Property, Value, Vendor};

const BODY: &str = "Tuya message body";

/// Normalizes an IoT Core body according to the envelope's `protocol`.
pub(crate) fn iot_core(
    source: &str,
    envelope: &Envelope,
    body: Vec<u8>,
) -> Result<Event, DecodeError> {
    let body = into_text(body)?;
    match envelope.protocol {
        Some(4) => status(source, envelope, body),
        Some(_) => biz_message(source, envelope, body),
        // Without a protocol number, the body's own keys tell which shape it is.
        None if memchr_bizcode(body.as_bytes()) => biz_message(source, envelope, body),
        None => status(source, envelope, body),
    }
}

fn memchr_bizcode(body: &[u8]) -> bool {
    body.windows(9).any(|w| w == b"\"bizCode\"")
}

/// The protocol 4 body: `{"dataId","devId","productKey","status":[…]}`.
#[derive(Debug, PartialEq, Deserialize)]
struct StatusBody<'a> {
    #[serde(rename = "dataId", borrow, default)]
    data_id: Option<Cow<'a, str>>,
    #[serde(rename = "devId", borrow, default)]
    dev_id: Option<Cow<'a, str>>,
    #[serde(rename = "productKey", borrow, default)]
    product_key: Option<Cow<'a, str>>,
    #[serde(default)]
    status: StatusList,
}

/// `status`, read entry by entry straight into properties (no list of entries in between);
/// an entry with neither a `code` nor a dp id is left out.
#[derive(Debug, Default, PartialEq)]
struct StatusList(Vec<Property>);

impl<'de> Deserialize<'de> for StatusList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor;

        impl<'de> Visitor<'de> for ListVisitor {
            type Value = StatusList;

            /// serde's own words for a `Vec`, so a wrong shape reads as it did.
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<StatusList, A::Error> {
                properties(seq, StatusItem::into_property).map(StatusList)
            }
        }

        deserializer.deserialize_seq(ListVisitor)
    }
}

/// The properties of a list of entries, read as `E` and each turned into at most one property
/// by `into` (both status lists: IoT Core's `status`, Smart Business's `data.status`).
fn properties<'de, A: SeqAccess<'de>, E: Deserialize<'de>>(
    mut seq: A,
    into: impl Fn(E) -> Option<Property>,
) -> Result<Vec<Property>, A::Error> {
    let mut properties = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
    while let Some(entry) = seq.next_element::<E>()? {
        properties.extend(into(entry));
    }
    Ok(properties)
}

/// One entry of `status`: `{"code","value","t","<dpId>":"<value as text>"}`.
#[derive(Default)]
struct StatusItem<'a> {
    code: Option<String>,
    value: Option<Value>,
    time_ms: Option<u64>,
    /// The dp id and its raw value, for devices that send no `code`; borrowed, since it is
    /// rarely needed.
    dp: Option<(Cow<'a, str>, &'a str)>,
}

impl<'de: 'a, 'a> Deserialize<'de> for StatusItem<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ItemVisitor;

        impl<'de> Visitor<'de> for ItemVisitor {
            type Value = StatusItem<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a status entry object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StatusItem<'de>, A::Error> {
                let mut item = StatusItem::default();
                while let Some(CowStr(key)) = map.next_key::<CowStr<'de>>()? {
                    match key.as_ref() {
                        "code" => item.code = Some(map.next_value()?),
                        "value" => item.value = Some(map.next_value()?),
                        "t" | "time" => item.time_ms = map.next_value::<LenientU64>()?.0,
                        dp if is_dp_id(dp) => {
                            item.dp = Some((key, map.next_value::<&'de RawValue>()?.get()));
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(item)
            }
        }

        deserializer.deserialize_map(ItemVisitor)
    }
}

/// Whether a status entry's key is a dp id (`"2":"white"`): digits only.
fn is_dp_id(key: &str) -> bool {
    !key.is_empty() && key.bytes().all(|b| b.is_ascii_digit())
}

/// One entry read by [`flat`], as the serde reading above reads it: `None` for a `code` that
/// is not a string, which serde_json refuses.
impl<'a> flat::Visit<'a> for StatusItem<'a> {
    fn plain(&mut self, key: &'a str, raw: &'a str) -> Option<()> {
        match key {
            "code" => self.code = Some(flat::string(raw)?.to_owned()),
            "value" => self.value = Some(plain_value(raw)?),
            "t" | "time" => {
                self.time_ms = if raw.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
                    // A number: plain digits, or left to serde_json (a negative, a
                    // fraction, one out of range), which may refuse it.
                    Some(raw.parse().ok()?)
                } else {
                    LenientU64::from_raw(raw)
                };
            }
            dp if is_dp_id(dp) => self.dp = Some((Cow::Borrowed(key), raw)),
            _ => {}
        }
        Some(())
    }
}

impl<'a> StatusItem<'a> {
    fn into_property(self) -> Option<Property> {
        let (dp_id, dp_raw) = self.dp.unzip();
        let value = match (self.value, dp_raw) {
            (Some(value), _) => value,
            // The dp form writes the value as text: `"1":"true"`.
            (None, Some(raw)) => match serde_json::from_str::<Value>(raw) {
                Ok(Value::Text(text)) => Value::from_lenient_text(&text),
                Ok(other) => other,
                Err(_) => Value::Null,
            },
            (None, None) => Value::Null,
        };
        Some(Property {
            code: self.code.or_else(|| dp_id.map(Cow::into_owned))?,
            value,
            time_ms: self.time_ms,
            service: None,
        })
    }
}

impl<'a> StatusBody<'a> {
    /// Reads the body: the usual plain shape directly, anything else through serde_json.
    fn parse(body: &'a str) -> Result<Self, DecodeError> {
        match Self::read_flat(body) {
            Some(parsed) => Ok(parsed),
            None => parse_json_str(BODY, body),
        }
    }

    /// The body read by [`flat`], to what serde_json would read, or `None` where the text
    /// is not plain enough for it or serde_json would refuse it (a duplicate field, a
    /// `code` that is not a string, an integer too large for 64 bits).
    fn read_flat(body: &'a str) -> Option<Self> {
        let mut reader = StatusReader {
            body: StatusBody {
                data_id: None,
                dev_id: None,
                product_key: None,
                status: StatusList(Vec::with_capacity(8)),
            },
            seen: [false; 4],
        };
        flat::read(body, &mut reader)?;
        Some(reader.body)
    }
}

/// A status body as [`flat`] reads it, and which of its fields it has met: the derived serde
/// reading refuses a field met twice.
struct StatusReader<'a> {
    body: StatusBody<'a>,
    seen: [bool; 4],
}

/// Marks a field met: `None` if it was already.
fn first_meeting(seen: &mut bool) -> Option<()> {
    (!std::mem::replace(seen, true)).then_some(())
}

impl<'a> flat::Visit<'a> for StatusReader<'a> {
    fn plain(&mut self, key: &'a str, raw: &'a str) -> Option<()> {
        let (slot, index) = match key {
            "dataId" => (&mut self.body.data_id, 0),
            "devId" => (&mut self.body.dev_id, 1),
            "productKey" => (&mut self.body.product_key, 2),
            // serde_json refuses a `status` that is not a list.
            "status" => return None,
            _ => return Some(()),
        };
        first_meeting(&mut self.seen[index])?;
        *slot = match raw {
            "null" => None,
            text => Some(Cow::Borrowed(flat::string(text)?)),
        };
        Some(())
    }

    fn nested(&mut self, key: &'a str, text: &'a str, at: usize) -> Option<usize> {
        if key != "status" {
            return None;
        }
        first_meeting(&mut self.seen[3])?;
        let status = &mut self.body.status.0;
        flat::array(text, at, |at| {
            let mut item = StatusItem::default();
            let end = flat::object(text, at, &mut item)?;
            status.extend(item.into_property());
            Some(end)
        })
    }
}

/// A plain JSON value's raw text as [`Value`], as its serde reading types it: integers that
/// fit 64 bits directly; anything with a fraction or an exponent through serde_json, whose
/// float reading this must match; `None` for a longer integer (serde_json reads it as a
/// float; left to it), or for a number serde_json refuses (out of range).
fn plain_value(raw: &str) -> Option<Value> {
    Some(match raw {
        "null" => Value::Null,
        "true" => Value::Boolean(true),
        "false" => Value::Boolean(false),
        text if text.starts_with('"') => Value::Text(flat::string(text)?.to_owned()),
        // serde_json reads `-0` as a float, too.
        text if text == "-0" || text.bytes().any(|b| matches!(b, b'.' | b'e' | b'E')) => {
            serde_json::from_str(text).ok()?
        }
        text if text.starts_with('-') => Value::Integer(text.parse().ok()?),
        text => {
            let whole: u64 = text.parse().ok()?;
            i64::try_from(whole).map_or(Value::Float(whole as f64), Value::Integer)
        }
    })
}

fn status(source: &str, envelope: &Envelope, body: String) -> Result<Event, DecodeError> {
    let parsed = StatusBody::parse(&body)?;
    let dev_id = parsed
        .dev_id
        .filter(|d| !d.is_empty())
        .ok_or_else(|| DecodeError::shape(BODY, "protocol 4 status without `devId`"))?;
    let properties = parsed.status.0;
    let time_ms = properties
        .iter()
        .filter_map(|p| p.time_ms)
        .max()
        .or(envelope.time_ms)
        .unwrap_or(0);
    let id = match parsed.data_id {
        Some(id) if !id.is_empty() => id.into_owned(),
        _ => fallback_id(envelope, body.as_bytes()),
    };
    let device = Device {
        id: dev_id.into_owned(),
        product: parsed.product_key.map(Cow::into_owned),
        name: None,
    };
    Ok(Event {
        id,
        source: source.to_owned(),
        vendor: Vendor::Tuya,
        kind: Kind::Properties,
        action: "status".to_owned(),
        device,
        time_ms,
        properties,
        payload: Json::from_parsed(body),
        attributes: BTreeMap::new(),
    })
}

/// Protocol 20 (`{"bizCode","bizData","devId","productKey","ts","uuid"}`) and the 1000 series.
fn biz_message(source: &str, envelope: &Envelope, body: String) -> Result<Event, DecodeError> {
    let root = root(&body)?;
    let biz_code = root.text("bizCode").unwrap_or_default();
    let biz_data = ["bizData", "data"]
        .iter()
        .find_map(|k| root.get(k).and_then(RawObject::of))
        .unwrap_or_default();
    let protocol = envelope.protocol.unwrap_or(0);
    let kind = biz_kind(protocol, &biz_code);

    let dev_id = root
        .text("devId")
        .or_else(|| biz_data.text("devId"))
        .unwrap_or_default();
    let product = ["productKey", "productId"]
        .iter()
        .find_map(|k| root.text(k).or_else(|| biz_data.text(k)))
        .map(Cow::into_owned);
    let name = match &*biz_code {
        "nameUpdate" => biz_data.text("name").map(Cow::into_owned),
        _ => None,
    };
    let properties = match &*biz_code {
        "deviceSignal" => signal_properties(&biz_data),
        "deviceDpCommand" => dp_command_properties(&biz_data),
        _ => ["properties", "status"]
            .iter()
            .find_map(|k| biz_data.get(k).or_else(|| root.get(k)))
            .map(items_to_properties)
            .unwrap_or_default(),
    };
    let time_ms = number(&root, "ts")
        .or_else(|| number(&biz_data, "time"))
        .or_else(|| properties.iter().filter_map(|p| p.time_ms).max())
        .or(envelope.time_ms)
        .unwrap_or(0);
    let id = root
        .text("dataId")
        .or_else(|| biz_data.text("dataId"))
        .map_or_else(|| fallback_id(envelope, body.as_bytes()), Cow::into_owned);
    let action = if biz_code.is_empty() {
        format!("protocol-{protocol}")
    } else {
        biz_code.to_string()
    };
    let device = Device {
        id: dev_id.into_owned(),
        product,
        name,
    };
    let mut attributes = BTreeMap::new();
    attributes.insert(ATTR_BIZ_CODE.to_owned(), biz_code.into_owned());
    Ok(Event {
        id,
        source: source.to_owned(),
        vendor: Vendor::Tuya,
        kind,
        action,
        device,
        time_ms,
        properties,
        payload: Json::from_parsed(body),
        attributes,
    })
}

/// What a protocol 20 or 1000-series business code is about.
fn biz_kind(protocol: u64, biz_code: &str) -> Kind {
    match biz_code {
        "online" | "deviceOnline" => Kind::Online,
        "offline" | "deviceOffline" => Kind::Offline,
        "nameUpdate" | "dpNameUpdate" | "delete" | "bindUser" | "upgradeStatus" | "share" => {
            Kind::Lifecycle
        }
        "deviceSignal" | "devicePropertyMessage" | "deviceStatusMessage" => Kind::Properties,
        "deviceDpCommand" => Kind::Command,
        "deviceEventMessage" => Kind::DeviceEvent,
        _ => match protocol {
            1001 | 1002 => Kind::Lifecycle,
            _ => Kind::Other,
        },
    }
}

/// `deviceSignal`: `reportData[{memory, rssi, t}]` → one property per measurement, in the
/// order of their names.
fn signal_properties(biz_data: &RawObject<'_>) -> Vec<Property> {
    let Some(reports) = biz_data.get("reportData").and_then(raw_array) else {
        return Vec::new();
    };
    reports
        .into_iter()
        .filter_map(RawObject::of)
        .flat_map(|report| {
            let time_ms = number(&report, "t");
            // By name, each name once with its last value.
            let measurements: BTreeMap<Cow<'_, str>, &str> =
                report.0.into_iter().filter(|(k, _)| k != "t").collect();
            measurements.into_iter().map(move |(code, raw)| Property {
                code: code.into_owned(),
                value: Value::from(tree(raw)),
                time_ms,
                service: None,
            })
        })
        .collect()
}

/// `deviceDpCommand`: `command[{dpId, value}]` → one property per datapoint commanded.
fn dp_command_properties(biz_data: &RawObject<'_>) -> Vec<Property> {
    let Some(commands) = biz_data.get("command").and_then(raw_array) else {
        return Vec::new();
    };
    commands
        .into_iter()
        .filter_map(RawObject::of)
        .filter_map(|command| {
            let raw = command.get("dpId").or_else(|| command.get("code"))?;
            let code = match unquote(raw) {
                Some(text) => text.into_owned(),
                None => tree(raw).to_string(),
            };
            Some(Property::new(
                code,
                command
                    .get("value")
                    .map_or(Value::Null, |raw| Value::from(tree(raw))),
            ))
        })
        .collect()
}

/// A list of `{code|dpId, value, t|time}` objects → properties; string values are typed
/// leniently (the Smart Business platform writes `"true"`).
fn items_to_properties(items: &str) -> Vec<Property> {
    serde_json::from_str::<Items>(items).map_or_else(|_| Vec::new(), |items| items.0)
}

/// Visitor methods that read a JSON scalar as the default (empty) value: a lenient reader
/// skips a value of the wrong kind, as a tree's `as_object` or `as_array` would.
macro_rules! scalars_read_as_empty {
    () => {
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
    };
}

/// A list of items read in one pass straight into properties; anything but an array reads
/// as empty, and an entry that is not an object, or has no code, is left out.
#[derive(Debug, Default, PartialEq)]
struct Items(Vec<Property>);

impl<'de> Deserialize<'de> for Items {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ItemsVisitor;

        impl<'de> Visitor<'de> for ItemsVisitor {
            type Value = Items;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }

            scalars_read_as_empty!();

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Items, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Items::default())
            }

            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Items, A::Error> {
                properties(seq, Item::into_property).map(Items)
            }
        }

        deserializer.deserialize_any(ItemsVisitor)
    }
}

/// One entry of an items list, each field as its raw JSON text (the last one where a key
/// repeats); all `None` for an entry that is not an object.
#[derive(Default)]
struct Item<'a> {
    code: Option<&'a str>,
    dp_id: Option<&'a str>,
    value: Option<&'a str>,
    time: Option<&'a str>,
    t: Option<&'a str>,
}

impl<'de: 'a, 'a> Deserialize<'de> for Item<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ItemVisitor;

        impl<'de> Visitor<'de> for ItemVisitor {
            type Value = Item<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }

            scalars_read_as_empty!();

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Item<'de>, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Item::default())
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Item<'de>, A::Error> {
                let mut item = Item::default();
                while let Some(CowStr(key)) = map.next_key::<CowStr<'de>>()? {
                    let slot = match key.as_ref() {
                        "code" => &mut item.code,
                        "dpId" => &mut item.dp_id,
                        "value" => &mut item.value,
                        "time" => &mut item.time,
                        "t" => &mut item.t,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    *slot = Some(map.next_value::<&'de RawValue>()?.get());
                }
                // A `{…}` with none of the fields is still an entry (it has no code, so it
                // is left out); only a value of another kind reads as the default.
                Ok(item)
            }
        }

        deserializer.deserialize_any(ItemVisitor)
    }
}

/// One entry read by [`flat`], as the serde reading above reads it.
impl<'a> flat::Visit<'a> for Item<'a> {
    fn plain(&mut self, key: &'a str, raw: &'a str) -> Option<()> {
        let slot = match key {
            "code" => &mut self.code,
            "dpId" => &mut self.dp_id,
            "value" => &mut self.value,
            "time" => &mut self.time,
            "t" => &mut self.t,
            _ => return Some(()),
        };
        *slot = Some(raw);
        Some(())
    }
}

impl Item<'_> {
    fn into_property(self) -> Option<Property> {
        let code = self
            .code
            .and_then(unquote)
            .map(Cow::into_owned)
            .or_else(|| {
                let raw = self.dp_id?;
                match unquote(raw) {
                    Some(text) => Some(text.into_owned()),
                    None => match tree(raw) {
                        Tree::Number(n) => Some(n.to_string()),
                        _ => None,
                    },
                }
            })?;
        let value = match self.value {
            Some(raw) => match unquote(raw) {
                Some(text) => Value::from_lenient_text(&text),
                None => Value::from(tree(raw)),
            },
            None => Value::Null,
        };
        Some(Property {
            code,
            value,
            time_ms: raw_number(self.time).or_else(|| raw_number(self.t)),
            service: None,
        })
    }
}

/// The Smart Business body `{"bizCode","eventType","data":{…}}`, read in one pass: each
/// field as its raw JSON text (the last one where a key repeats).
#[derive(Debug, Default, PartialEq)]
struct BusinessBody<'a> {
    biz_code: Option<&'a str>,
    event_type: Option<&'a str>,
    data: BusinessData<'a>,
}

/// `data`; all `None` when it is not an object.
#[derive(Debug, Default, PartialEq)]
struct BusinessData<'a> {
    dev_id: Option<&'a str>,
    product_id: Option<&'a str>,
    device_name: Option<&'a str>,
    data_id: Option<&'a str>,
    namespace: Option<&'a str>,
    time: Option<&'a str>,
    status: Option<Items>,
}

impl<'de: 'a, 'a> Deserialize<'de> for BusinessBody<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BodyVisitor;

        impl<'de> Visitor<'de> for BodyVisitor {
            type Value = BusinessBody<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut body = BusinessBody::default();
                while let Some(CowStr(key)) = map.next_key::<CowStr<'de>>()? {
                    match key.as_ref() {
                        "bizCode" => body.biz_code = Some(map.next_value::<&RawValue>()?.get()),
                        "eventType" => {
                            body.event_type = Some(map.next_value::<&RawValue>()?.get());
                        }
                        "data" => body.data = map.next_value()?,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(body)
            }
        }

        deserializer.deserialize_map(BodyVisitor)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for BusinessData<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DataVisitor;

        impl<'de> Visitor<'de> for DataVisitor {
            type Value = BusinessData<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }

            scalars_read_as_empty!();

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(BusinessData::default())
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut data = BusinessData::default();
                while let Some(CowStr(key)) = map.next_key::<CowStr<'de>>()? {
                    let slot = match key.as_ref() {
                        "devId" => &mut data.dev_id,
                        "productId" => &mut data.product_id,
                        "deviceName" => &mut data.device_name,
                        "dataId" => &mut data.data_id,
                        "namespace" => &mut data.namespace,
                        "time" => &mut data.time,
                        "status" => {
                            data.status = Some(map.next_value()?);
                            continue;
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    *slot = Some(map.next_value::<&'de RawValue>()?.get());
                }
                Ok(data)
            }
        }

        deserializer.deserialize_any(DataVisitor)
    }
}

impl<'a> BusinessBody<'a> {
    /// Reads the body: the usual plain shape directly, anything else through serde_json.
    fn parse(body: &'a str) -> Option<Self> {
        Self::read_flat(body).or_else(|| serde_json::from_str(body).ok())
    }

    /// The body read by [`flat`], to what serde_json would read, or `None` where the text is
    /// not plain enough for it: a value nested anywhere but `data` and `data.status`, an
    /// entry of `status` that is not a flat object.
    fn read_flat(body: &'a str) -> Option<Self> {
        let mut parsed = BusinessBody::default();
        flat::read(body, &mut parsed)?;
        Some(parsed)
    }
}

impl<'a> flat::Visit<'a> for BusinessBody<'a> {
    fn plain(&mut self, key: &'a str, raw: &'a str) -> Option<()> {
        match key {
            "bizCode" => self.biz_code = Some(raw),
            "eventType" => self.event_type = Some(raw),
            // A `data` of another kind reads as empty, and the last one met counts.
            "data" => self.data = BusinessData::default(),
            _ => {}
        }
        Some(())
    }

    fn nested(&mut self, key: &'a str, text: &'a str, at: usize) -> Option<usize> {
        if key != "data" {
            return None;
        }
        let mut data = BusinessData::default();
        let end = flat::object(text, at, &mut data)?;
        self.data = data;
        Some(end)
    }
}

impl<'a> flat::Visit<'a> for BusinessData<'a> {
    fn plain(&mut self, key: &'a str, raw: &'a str) -> Option<()> {
        let slot = match key {
            "devId" => &mut self.dev_id,
            "productId" => &mut self.product_id,
            "deviceName" => &mut self.device_name,
            "dataId" => &mut self.data_id,
            "namespace" => &mut self.namespace,
            "time" => &mut self.time,
            // A `status` of another kind reads as an empty list.
            "status" => {
                self.status = Some(Items::default());
                return Some(());
            }
            _ => return Some(()),
        };
        *slot = Some(raw);
        Some(())
    }

    fn nested(&mut self, key: &'a str, text: &'a str, at: usize) -> Option<usize> {
        if key != "status" {
            return None;
        }
        let mut properties = Vec::with_capacity(4);
        let end = flat::array(text, at, |at| {
            let mut item = Item::default();
            let end = flat::object(text, at, &mut item)?;
            properties.extend(item.into_property());
            Some(end)
        })?;
        self.status = Some(Items(properties));
        Some(end)
    }
}

/// The Smart Business body `{"bizCode","eventType","data"}`.
pub fn business(source: &str, envelope: &Envelope, body: Vec<u8>) -> Result<Event, DecodeError> {
    let body = into_text(body)?;
    let Some(BusinessBody {
        biz_code,
        event_type,
        data,
    }) = BusinessBody::parse(&body)
    else {
        return Err(root(&body)
            .err()
            .unwrap_or_else(|| DecodeError::shape(BODY, "an object too deeply nested to read")));
    };
    let text = |raw: Option<&str>| raw.and_then(|raw| unquote(raw).map(Cow::into_owned));
    let biz_code = text(biz_code).ok_or_else(|| DecodeError::shape(BODY, "missing `bizCode`"))?;
    let event_type = text(event_type).unwrap_or_default();

    let kind = match (biz_code.as_str(), event_type.as_str()) {
        ("device", "online") => Kind::Online,
        ("device", "offline") => Kind::Offline,
        ("device", "dp_report") => Kind::Properties,
        ("device", "bind" | "unbind" | "reset" | "name_update") => Kind::Lifecycle,
        ("voice", "voice_nlu") => Kind::Message,
        _ => Kind::Other,
    };
    let properties = match data.status {
        Some(Items(properties)) if kind == Kind::Properties => properties,
        _ => Vec::new(),
    };
    let device = Device {
        id: text(data.dev_id).unwrap_or_default(),
        product: text(data.product_id),
        name: text(data.device_name),
    };
    let time_ms = raw_number(data.time)
        .or_else(|| properties.iter().filter_map(|p| p.time_ms).max())
        .or(envelope.time_ms)
        .unwrap_or(0);
    let id = text(data.data_id).unwrap_or_else(|| fallback_id(envelope, body.as_bytes()));

    let mut attributes = BTreeMap::new();
    attributes.insert(ATTR_BIZ_CODE.to_owned(), biz_code);
    if let Some(namespace) = text(data.namespace) {
        attributes.insert("namespace".to_owned(), namespace);
    }
    Ok(Event {
        id,
        source: source.to_owned(),
        vendor: Vendor::Tuya,
        kind,
        action: event_type,
        device,
        time_ms,
        properties,
        payload: Json::from_parsed(body),
        attributes,
    })
}

/// A body's top-level object, read one level deep; for any other body, the error that
/// reading it whole gives (what is wrong with the JSON, or that it is not an object).
fn root(body: &str) -> Result<RawObject<'_>, DecodeError> {
    serde_json::from_str(body).or_else(|_| {
        let tree: Tree = parse_json_str(BODY, body)?;
        Err(DecodeError::shape(
            BODY,
            if tree.is_object() {
                "an object too deeply nested to read"
            } else {
                "not a JSON object"
            },
        ))
    })
}

/// A value read whole, for the few that are kept as they are (compound values, numbers
/// written as codes). The text was checked as JSON when its object was read.
fn tree(raw: &str) -> Tree {
    serde_json::from_str(raw).unwrap_or(Tree::Null)
}

/// A whole number, written as a JSON number or a string of digits.
fn number(object: &RawObject<'_>, key: &str) -> Option<u64> {
    raw_number(object.get(key))
}

/// A raw value read as a whole number: a JSON number, or a string of digits.
fn raw_number(raw: Option<&str>) -> Option<u64> {
    let raw = raw?;
    match unquote(raw) {
        Some(text) => text.trim().parse().ok(),
        None => raw.parse().ok(),
    }
}

/// The envelope's signature is unique per message and stable across redeliveries; without
/// one, a digest of the body.
fn fallback_id(envelope: &Envelope, body: &[u8]) -> String {
    if envelope.sign.is_empty() {
        digest_id(body)
    } else {
        envelope.sign.clone()
    }
}

/// The decrypted body as text. Checked once here, it is then parsed as `str` (serde_json
/// skips re-checking every string) and kept as the payload once the parse has succeeded.
fn into_text(body: Vec<u8>) -> Result<String, DecodeError> {
    String::from_utf8(body).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        DecodeError::shape(
            BODY,
            format!("not UTF-8 text (invalid byte at offset {offset})"),
        )
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::dialect::tuya::SignatureCheck;

    /// A status body with every kind of entry: code and dp id, dp id alone, a float, a
    /// quoted time, an integer past `i64`, a quoted negative time, a null value, an unknown key.
    const STATUS: &str = r#"{"dataId":"16Qm","devId":"vdevx","productKey":"gXkH","status":[{"2":"white","code":"work_mode","t":1631545543536,"value":"white"},{"3":"764","code":"bright_value_v2","t":1631545543536,"value":764},{"code":"temp_current","t":"1631545543536","value":-23.5e0,"4":"23.5"},{"5":"true"},{"code":"big","value":18446744073709551615,"time":"-3"},{"code":"off","value":null,"extra":false}],"ts":7}"#;

    #[test]
    fn the_usual_status_body_is_read_directly_to_what_serde_json_reads() {
        let quick = StatusBody::read_flat(STATUS).expect("plain enough");
        let serde: StatusBody<'_> = parse_json_str(BODY, STATUS).expect("valid");
        assert_eq!(quick, serde);
        assert_eq!(quick.status.0.len(), 6, "every entry has a code or a dp id");
    }

    #[test]
    fn a_plain_value_is_typed_as_serde_json_types_it() {
        for raw in [
            r#""x""#,
            "true",
            "false",
            "null",
            "0",
            "-0",
            "764",
            "-764",
            "9223372036854775807",
            "9223372036854775808",
            "18446744073709551615",
            "-9223372036854775808",
            "1.5",
            "-2.5e3",
            "1E2",
            "0.1e-2",
        ] {
            let serde: Value = serde_json::from_str(raw).expect("valid");
            assert_eq!(plain_value(raw), Some(serde), "{raw}");
        }
        for raw in ["18446744073709551616", "-9223372036854775809"] {
            assert_eq!(plain_value(raw), None, "{raw} is left to serde_json");
        }
    }

    #[test]
    fn what_serde_json_refuses_is_left_to_it() {
        for text in [
            r#"{"devId":"a","devId":"b","status":[]}"#,
            r#"{"devId":"a","status":[{"code":1,"value":1}]}"#,
            r#"{"devId":"a","status":[{"code":null}]}"#,
            r#"{"devId":"a","status":null}"#,
            r#"{"devId":7,"status":[]}"#,
            r#"{"devId":"a","status":[{"code":"c","t":1e31545543536}]}"#,
        ] {
            assert!(StatusBody::read_flat(text).is_none(), "{text}");
            assert!(
                parse_json_str::<StatusBody<'_>>(BODY, text).is_err(),
                "{text}"
            );
        }
    }

    proptest! {
        /// Status bodies with a few bytes replaced, inserted or removed: wherever the quick
        /// reader answers, serde_json reads the body to the same device and properties.
        #[test]
        fn the_quick_status_reader_answers_only_what_serde_json_reads_the_same(
            edits in flat::testing::edits(STATUS.len())
        ) {
            let text = &flat::testing::edited(STATUS, &edits);
            if let Some(quick) = StatusBody::read_flat(text) {
                let serde = parse_json_str::<StatusBody<'_>>(BODY, text).ok();
                prop_assert_eq!(Some(quick), serde, "{}", text);
            }
        }
    }

    /// A Smart Business body with every kind of entry: a code, a dp id as a number and as
    /// text, a value of every plain kind, `time` and `t`, an entry without a code, unknown
    /// keys at every level, and a `data` met twice (the last one counts).
    const BUSINESS: &str = r#"{"bizCode":"device","data":{"devId":"old"},"eventType":"dp_report","data":{"devId":"d1","productId":"p1","dataId":"x1","namespace":"ns","time":1631545543536,"deviceName":"lamp","status":[{"code":"switch_1","value":"true","time":1631545543536},{"dpId":7,"value":764,"t":"1700"},{"dpId":"8","value":-2.5e1},{"code":"n","value":null,"extra":false},{"value":1},{"code":"big","value":18446744073709551616,"time":-3}],"other":1},"ts":7}"#;

    #[test]
    fn the_usual_business_body_is_read_directly_to_what_serde_json_reads() {
        let quick = BusinessBody::read_flat(BUSINESS).expect("plain enough");
        let serde: BusinessBody<'_> = serde_json::from_str(BUSINESS).expect("valid");
        assert_eq!(quick, serde);
        assert_eq!(quick.data.dev_id, Some(r#""d1""#), "the last `data` counts");
        let properties = quick.data.status.expect("a status list").0;
        assert_eq!(
            properties.len(),
            5,
            "every entry with a code or a dp id: {properties:?}"
        );
        for (body, status) in [
            (r#"{"bizCode":"device","data":{"status":null}}"#, Some(0)),
            (r#"{"bizCode":"device","data":{"status":[]}}"#, Some(0)),
            (r#"{"bizCode":"device","data":7}"#, None),
        ] {
            let quick = BusinessBody::read_flat(body).expect(body);
            let serde: BusinessBody<'_> = serde_json::from_str(body).expect(body);
            assert_eq!(quick, serde, "{body}");
            assert_eq!(
                quick.data.status.map(|items| items.0.len()),
                status,
                "{body}"
            );
        }
    }

    #[test]
    fn a_business_body_with_other_nested_values_is_read_by_serde_json() {
        for body in [
            r#"{"bizCode":"device","data":{"devId":"d","location":{"id":"1"}}}"#,
            r#"{"bizCode":"device","data":{"status":[{"code":"c","value":{"a":1}}]}}"#,
            r#"{"bizCode":"device","data":{"status":[1,{"code":"c"}]}}"#,
            r#"{"bizCode":"device","data":{"status":{"code":"c"}}}"#,
            r#"{"bizCode":"device","data":[]}"#,
            r#"{"bizCode":"device","extra":[1],"data":{}}"#,
        ] {
            assert_eq!(BusinessBody::read_flat(body), None, "{body}");
            let serde: Result<BusinessBody<'_>, _> = serde_json::from_str(body);
            assert!(serde.is_ok(), "{body}");
        }
        let e = business(
            "b",
            &envelope(0),
            br#"{"bizCode":"device","eventType":"dp_report","data":{"devId":"d","status":[{"code":"c","value":{"a":1}}]}}"#.to_vec(),
        )
        .unwrap();
        assert_eq!(e.properties.len(), 1);
        assert_eq!(e.properties[0].code, "c");
    }

    proptest! {
        /// Business bodies with a few bytes replaced, inserted or removed: wherever the quick
        /// reader answers, serde_json reads the body to the same fields and properties.
        #[test]
        fn the_quick_business_reader_answers_only_what_serde_json_reads_the_same(
            edits in flat::testing::edits(BUSINESS.len())
        ) {
            let text = &flat::testing::edited(BUSINESS, &edits);
            if let Some(quick) = BusinessBody::read_flat(text) {
                let serde = serde_json::from_str::<BusinessBody<'_>>(text).ok();
                prop_assert_eq!(Some(quick), serde, "{}", text);
            }
        }
    }

    fn envelope(protocol: u64) -> Envelope {
        Envelope {
            protocol: Some(protocol),
            time_ms: Some(1_000),
            sign: "abc".into(),
            signature: SignatureCheck::Verified,
        }
    }

    fn core(protocol: u64, body: &str) -> Event {
        iot_core("src", &envelope(protocol), body.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn status_entries_become_typed_properties_with_their_times() {
        let e = core(
            4,
            r#"{"dataId":"D1","devId":"dev","productKey":"pk","status":[{"code":"bright_value_v2","value":764,"t":"1700","3":"764"},{"code":"temp","value":23.5,"t":1800}]}"#,
        );
        assert_eq!(e.id, "D1");
        assert_eq!(e.device.product.as_deref(), Some("pk"));
        assert_eq!(
            e.properties[0],
            Property {
                code: "bright_value_v2".into(),
                value: Value::Integer(764),
                time_ms: Some(1700),
                service: None
            }
        );
        assert_eq!(e.properties[1].value, Value::Float(23.5));
        assert_eq!(e.time_ms, 1800, "the latest datapoint time");
    }

    #[test]
    fn status_entry_without_code_falls_back_to_its_dp_id() {
        let e = core(4, r#"{"devId":"dev","status":[{"5":"true","t":1}]}"#);
        assert_eq!(
            e.properties,
            vec![Property {
                code: "5".into(),
                value: Value::Boolean(true),
                time_ms: Some(1),
                service: None
            }]
        );
        assert_eq!(e.id, "abc", "no dataId: the envelope signature");
    }

    #[test]
    fn status_without_device_is_a_json_error_naming_the_field() {
        let err = iot_core("s", &envelope(4), br#"{"status":[]}"#.to_vec()).unwrap_err();
        assert_eq!(err.kind(), crate::dialect::ErrorKind::Json);
        assert!(err.to_string().contains("devId"));
        let err = iot_core(
            "s",
            &envelope(4),
            br#"{"devId":"d","status":{"code":1}}"#.to_vec(),
        )
        .unwrap_err();
        assert_eq!(err.kind(), crate::dialect::ErrorKind::Json);
    }

    #[test]
    fn online_offline_and_rename_map_to_their_kinds() {
        let on = core(
            20,
            r#"{"bizCode":"online","bizData":{"time":55,"uid":"u"},"devId":"d","productKey":"p","ts":66}"#,
        );
        assert_eq!(
            (on.kind, on.action.as_str(), on.time_ms),
            (Kind::Online, "online", 66)
        );
        let off = core(
            20,
            r#"{"bizCode":"offline","bizData":{"time":55},"devId":"d"}"#,
        );
        assert_eq!((off.kind, off.time_ms), (Kind::Offline, 55));
        let renamed = core(
            20,
            r#"{"bizCode":"nameUpdate","bizData":{"devId":"d","name":"Küche"},"devId":"d","ts":1}"#,
        );
        assert_eq!(renamed.kind, Kind::Lifecycle);
        assert_eq!(renamed.device.name.as_deref(), Some("Küche"));
        assert_eq!(renamed.attribute(ATTR_BIZ_CODE), Some("nameUpdate"));
    }

    #[test]
    fn device_signal_reports_become_properties() {
        let e = core(
            20,
            r#"{"bizCode":"deviceSignal","bizData":{"reportData":[{"memory":1024,"rssi":-61,"t":9}]},"devId":"d","ts":1}"#,
        );
        assert_eq!(e.kind, Kind::Properties);
        let codes: Vec<_> = e
            .properties
            .iter()
            .map(|p| (p.code.as_str(), p.value.clone(), p.time_ms))
            .collect();
        assert_eq!(
            codes,
            vec![
                ("memory", Value::Integer(1024), Some(9)),
                ("rssi", Value::Integer(-61), Some(9))
            ]
        );
    }

    #[test]
    fn dp_command_lists_the_commanded_datapoints() {
        let e = core(
            20,
            r#"{"bizCode":"deviceDpCommand","bizData":{"command":[{"dpId":1,"value":true}]},"devId":"d","ts":1}"#,
        );
        assert_eq!(e.kind, Kind::Command);
        assert_eq!(e.properties, vec![Property::new("1", Value::Boolean(true))]);
    }

    #[test]
    fn unknown_business_codes_are_kept_as_other() {
        let e = core(
            20,
            r#"{"bizCode":"homeCreate","bizData":{"homeId":7,"novel":[1]},"ts":3}"#,
        );
        assert_eq!((e.kind, e.device.id.as_str()), (Kind::Other, ""));
        assert!(e.payload.as_str().contains("novel"));
    }

    #[test]
    fn iot_core_1000_series_is_read_leniently() {
        let e = core(
            1000,
            r#"{"bizCode":"devicePropertyMessage","bizData":{"devId":"d9","productId":"p9","properties":[{"code":"temp","value":21,"time":77,"dpId":4}],"extra":1},"ts":78}"#,
        );
        assert_eq!(
            (e.kind, e.device.id.as_str(), e.device.product.as_deref()),
            (Kind::Properties, "d9", Some("p9"))
        );
        assert_eq!(
            e.properties,
            vec![Property {
                code: "temp".into(),
                value: Value::Integer(21),
                time_ms: Some(77),
                service: None
            }]
        );
        let ota = core(1002, r#"{"bizCode":"otaProgress","bizData":{"devId":"d"}}"#);
        assert_eq!(ota.kind, Kind::Lifecycle);
        assert_eq!(ota.time_ms, 1000, "falls back to the envelope time");
    }

    #[test]
    fn business_dp_report_types_string_values() {
        let e = business(
            "b",
            &envelope(0),
            br#"{"bizCode":"device","eventType":"dp_report","data":{"devId":"d","productId":"p","dataId":"x1","namespace":"n","status":[{"code":"switch_1","value":"true","time":5},{"code":"pin","value":"0123","time":4}]}}"#.to_vec(),
        )
        .unwrap();
        assert_eq!(
            (e.kind, e.id.as_str(), e.time_ms),
            (Kind::Properties, "x1", 5)
        );
        assert_eq!(e.properties[0].value, Value::Boolean(true));
        assert_eq!(e.properties[1].value, Value::Text("0123".into()));
        assert_eq!(e.attribute("namespace"), Some("n"));
    }

    #[test]
    fn business_bind_carries_the_device_name_and_product() {
        let e = business(
            "b",
            &envelope(0),
            br#"{"bizCode":"device","eventType":"bind","data":{"devId":"d","deviceName":"socket","productId":"p","location":{"id":"1"}}}"#.to_vec(),
        )
        .unwrap();
        assert_eq!((e.kind, e.action.as_str()), (Kind::Lifecycle, "bind"));
        assert_eq!(
            e.device,
            Device {
                id: "d".into(),
                product: Some("p".into()),
                name: Some("socket".into())
            }
        );
    }

    #[test]
    fn business_body_without_biz_code_is_refused() {
        let err = business("b", &envelope(0), br#"{"eventType":"x"}"#.to_vec()).unwrap_err();
        assert!(err.to_string().contains("bizCode"));
    }

    /// Bodies are read one level at a time, not as a tree; they must read as the tree did.
    #[test]
    fn a_repeated_key_reads_as_its_last_value_and_escaped_text_is_unescaped() {
        let e = business(
            "b",
            &envelope(0),
            br#"{"bizCode":"device","eventType":"online","data":{"devId":"first","devId":"d\u00fc\/1","time":"12"},"eventType":"dp_report","data":{"devId":"last","status":[{"code":"a\"b","value":"\u0031"}],"time":" 34 "}}"#.to_vec(),
        )
        .unwrap();
        assert_eq!((e.kind, e.device.id.as_str()), (Kind::Properties, "last"));
        assert_eq!(e.time_ms, 34, "a quoted time, trimmed");
        assert_eq!(e.properties, vec![Property::new("a\"b", Value::Integer(1))]);
    }

    #[test]
    fn measurements_are_listed_by_name_each_once_with_its_last_value() {
        let e = core(
            20,
            r#"{"bizCode":"deviceSignal","bizData":{"reportData":[{"rssi":-70,"t":9,"memory":{"free":3,"all":8},"rssi":-61},"skipped"]},"devId":"d"}"#,
        );
        let codes: Vec<_> = e
            .properties
            .iter()
            .map(|p| (p.code.as_str(), p.value.clone()))
            .collect();
        assert_eq!(
            codes,
            vec![
                (
                    "memory",
                    Value::Json(Json::from(serde_json::json!({"all": 8, "free": 3})))
                ),
                ("rssi", Value::Integer(-61)),
            ]
        );
    }

    #[test]
    fn datapoint_ids_written_as_numbers_become_codes_as_written() {
        let commanded = core(
            20,
            r#"{"bizCode":"deviceDpCommand","bizData":{"command":[{"dpId":7,"value":{"b":1,"a":[2]}},{"code":"x"},{"value":1}]},"devId":"d"}"#,
        );
        assert_eq!(
            commanded.properties,
            vec![
                Property::new(
                    "7",
                    Value::Json(Json::from(serde_json::json!({"a": [2], "b": 1})))
                ),
                Property::new("x", Value::Null),
            ]
        );
        let reported = business(
            "b",
            &envelope(0),
            br#"{"bizCode":"device","eventType":"dp_report","data":{"devId":"d","status":[{"dpId":12,"value":"on","t":"5"},{"dpId":1.5,"value":2},{"dpId":true,"value":3},{"code":9,"dpId":"9","value":false}]}}"#.to_vec(),
        )
        .unwrap();
        let codes: Vec<_> = reported
            .properties
            .iter()
            .map(|p| (p.code.as_str(), p.value.clone(), p.time_ms))
            .collect();
        assert_eq!(
            codes,
            vec![
                ("12", Value::Text("on".into()), Some(5)),
                ("1.5", Value::Integer(2), None),
                ("9", Value::Boolean(false), None),
            ]
        );
    }

    #[test]
    fn a_body_that_is_not_an_object_says_so() {
        for body in [&br#"["bizCode"]"#[..], br#""device""#] {
            let err = business("b", &envelope(0), body.to_vec()).unwrap_err();
            assert!(err.to_string().contains("not a JSON object"), "{err}");
            let err = biz_message(
                "b",
                &envelope(20),
                String::from_utf8(body.to_vec()).unwrap(),
            )
            .unwrap_err();
            assert!(err.to_string().contains("not a JSON object"), "{err}");
        }
        let err = business("b", &envelope(0), br#"{"bizCode":"device",}"#.to_vec()).unwrap_err();
        assert!(matches!(err, DecodeError::Json { .. }), "{err}");
    }
}
