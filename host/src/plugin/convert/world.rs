// The conversions between the host's event model and the WIT types of a world whose `types`
// interface has the 0.2.0 shape (0.2.0 and 0.3.0, which adds the `timer` kind). Included by
// `convert.rs` once per world, inside a module that names the world's types `wit` and
// defines `kind_to` and `kind_from`; the code is the same for both, the types are not.

pub(crate) fn device_to(device: &Device) -> wit::Device {
    wit::Device {
        id: device.id.clone(),
        product: device.product.clone(),
        name: device.name.clone(),
    }
}

pub(crate) fn property_to(property: &Property) -> wit::Property {
    wit::Property {
        code: property.code.clone(),
        value: value_to(&property.value),
        time_ms: property.time_ms,
        service: property.service.clone(),
    }
}

pub(crate) fn value_to(value: &Value) -> wit::Value {
    match value {
        Value::Null => wit::Value::Null,
        Value::Boolean(b) => wit::Value::Boolean(*b),
        Value::Integer(i) => wit::Value::Integer(*i),
        Value::Float(f) => wit::Value::Float(*f),
        Value::Text(s) => wit::Value::Text(s.clone()),
        Value::Json(json) => wit::Value::Json(json.as_str().to_owned()),
    }
}

pub(crate) fn attributes_to(event: &Event) -> Vec<(String, String)> {
    event
        .attributes
        .iter()
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

/// The whole event, for `event-view.whole`.
pub(crate) fn event_to(event: &Event) -> wit::Event {
    wit::Event {
        id: event.id.clone(),
        source: event.source.clone(),
        vendor: event.vendor.as_str().to_owned(),
        kind: kind_to(event.kind),
        action: event.action.clone(),
        device: device_to(&event.device),
        time_ms: event.time_ms,
        properties: event.properties.iter().map(property_to).collect(),
        payload: event.payload.as_str().to_owned(),
        attributes: attributes_to(event),
    }
}





pub(super) fn device_from(device: wit::Device) -> Device {
    Device {
        id: device.id,
        product: device.product,
        name: device.name,
    }
}

pub(super) fn property_from(property: wit::Property) -> Result<Property, String> {
    let value = match property.value {
        wit::Value::Null => Value::Null,
        wit::Value::Boolean(b) => Value::Boolean(b),
        wit::Value::Integer(i) => Value::Integer(i),
        wit::Value::Float(f) => Value::Float(f),
        wit::Value::Text(s) => Value::Text(s),
        wit::Value::Json(text) => Value::Json(json(&format!("property `{}`", property.code), text)?),
    };
    Ok(Property {
        code: property.code,
        value,
        time_ms: property.time_ms,
        service: property.service,
    })
}

pub(super) fn properties_from(properties: Vec<wit::Property>) -> Result<Vec<Property>, String> {
    properties.into_iter().map(property_from).collect()
}


/// A payload the plugin sent back: `original`'s, unparsed, when it is the same text (the
/// common case), else parsed.
pub(super) fn payload_from(payload: String, original: Option<&Event>, what: &str) -> Result<Json, String> {
    match original {
        Some(original) if original.payload.as_str() == payload => Ok(original.payload.clone()),
        _ => json(what, payload),
    }
}

/// `original` is the event the plugin was given: a payload it passed back unchanged (the
/// common case) is not parsed again.
pub(super) fn event_from(event: wit::Event, original: Option<&Event>) -> Result<Event, String> {
    let vendor = match event.vendor.as_str() {
        "tuya" => Vendor::Tuya,
        "alibaba" => Vendor::Alibaba,
        "huawei" => Vendor::Huawei,
        "mqtt" => Vendor::Mqtt,
        other => {
            return Err(format!(
                "replacement event has unknown vendor `{}`",
                crate::dialect::clip(other)
            ));
        }
    };
    Ok(Event {
        id: event.id,
        source: event.source,
        vendor,
        kind: kind_from(event.kind),
        action: event.action,
        device: device_from(event.device),
        time_ms: event.time_ms,
        properties: properties_from(event.properties)?,
        payload: payload_from(event.payload, original, "replacement event payload")?,
        attributes: event.attributes.into_iter().collect(),
    })
}

/// `original` with an `update` verdict's changes made.
pub(super) fn updated(changes: wit::Changes, original: &Event) -> Result<Event, String> {
    Ok(Event {
        id: original.id.clone(),
        source: original.source.clone(),
        vendor: original.vendor,
        kind: changes.kind.map_or(original.kind, kind_from),
        action: changes.action.unwrap_or_else(|| original.action.clone()),
        device: changes
            .device
            .map_or_else(|| original.device.clone(), device_from),
        time_ms: changes.time_ms.unwrap_or(original.time_ms),
        properties: match changes.properties {
            Some(properties) => properties_from(properties)?,
            None => original.properties.clone(),
        },
        payload: match changes.payload {
            Some(payload) => payload_from(payload, Some(original), "updated payload")?,
            None => original.payload.clone(),
        },
        attributes: match changes.attributes {
            Some(attributes) => attributes.into_iter().collect(),
            None => original.attributes.clone(),
        },
    })
}

pub(super) fn command_from(command: wit::Command) -> Result<Command, String> {
    Ok(Command {
        params: json(
            &format!("params of command `{}`", command.name),
            command.params,
        )?,
        via: command.via,
        device: device_from(command.device),
        name: command.name,
        reply_to: command.reply_to,
    })
}

pub(crate) fn outcome_from(outcome: wit::Outcome, original: &Event) -> Result<Outcome, String> {
    let verdict = match outcome.verdict {
        wit::Verdict::Keep => Verdict::Keep,
        wit::Verdict::Drop => Verdict::Drop,
        wit::Verdict::Replace(event) => {
            Verdict::Replace(Box::new(event_from(event, Some(original))?))
        }
        wit::Verdict::Update(changes) => Verdict::Replace(Box::new(updated(changes, original)?)),
    };
    let commands = outcome
        .commands
        .into_iter()
        .map(command_from)
        .collect::<Result<_, _>>()?;
    Ok(Outcome { verdict, commands })
}
