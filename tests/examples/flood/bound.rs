//! The queues' bound: what the service's bounded buffers may legitimately hold at once under a
//! flood, computed from its configuration as the service itself parses it (so a default here
//! is the service's default).
//!
//! Sizes of the things held are estimates, on the generous side: the bound is the allowance a
//! flood gets over the idle size, not a prediction.

use iotrules::connector::mqtt::MqttSettings;
use iotrules::connector::pulsar::PulsarSettings;
use iotrules::plan::Plan;

/// What an event in flight holds besides copies of its message: the decoded event (id,
/// device, properties, attributes), its job, its settle record, its command and the
/// command's confirmation.
const EVENT_OVERHEAD: u64 = 2048;
/// Copies of the message an event in flight may hold: the delivery's payload (kept for a
/// dead letter), the decoded body, and the transport's own buffer of it.
const MESSAGE_COPIES: u64 = 3;
/// A queued command: device, name, params, the lane's job and its confirmation.
const COMMAND_BYTES: u64 = 512;
/// A remembered event id besides its text (held twice: the map's key and the expiry
/// queue's): the map's entry and control byte at its load factor, and the queue's entry at
/// up to twice its length.
const DEDUP_ENTRY_OVERHEAD: u64 = 128;
/// A device's twin as the store is given it (JSON, with its key): the
/// flood's largest, an MQTT device's six properties with their times, is about 460 B.
const TWIN_BYTES: u64 = 1024;
/// Commands an MQTT link's connection takes ahead of its window (`REQUESTS_QUEUED` in
/// `host/src/connector/mqtt.rs`).
const LINK_REQUESTS_QUEUED: u64 = 256;

/// A connector's inbound buffer: what it reads ahead of the pipeline.
fn inbound(items: &mut Vec<Item>, name: &str, buffer: usize) {
    items.push(Item {
        what: format!("connector {name} inbound"),
        bytes: buffer as u64,
        how: format!("buffer_bytes {buffer}"),
    });
}

/// One bounded buffer and what it may hold.
#[derive(Debug, Clone)]
pub(crate) struct Item {
    pub(crate) what: String,
    pub(crate) bytes: u64,
    pub(crate) how: String,
}

/// What the flood offers, which sizes the items that hold messages.
pub(crate) struct Offered {
    /// The largest message offered, in bytes.
    pub(crate) message_bytes: u64,
    /// The longest event id.
    pub(crate) id_bytes: u64,
    /// The Pulsar topic's partitions (each has its own read-ahead).
    pub(crate) partitions: u64,
}

/// The items of `plan`'s bound.
pub(crate) fn items(plan: &Plan, offered: &Offered) -> Result<Vec<Item>, String> {
    let config = &plan.config;
    let message = offered.message_bytes;
    let mut items = Vec::new();
    for connector in &config.connectors {
        match connector.kind.as_str() {
            "tuya-pulsar" | "tuya-business" => {
                let settings = PulsarSettings::from_config(connector).map_err(|e| e.to_string())?;
                inbound(&mut items, &connector.name, settings.buffer_bytes);
                let queue = u64::from(settings.receiver_queue);
                items.push(Item {
                    what: format!("connector {} read-ahead", connector.name),
                    bytes: offered.partitions * queue * message,
                    how: format!(
                        "{} partitions x {queue} messages x {message} B",
                        offered.partitions
                    ),
                });
            }
            "alibaba-mqtt" | "huawei-mqtt" | "mqtt" => {
                let settings = MqttSettings::from_config(connector).map_err(|e| e.to_string())?;
                inbound(&mut items, &connector.name, settings.buffer_bytes);
                let path = settings.path;
                let commands =
                    (path.lanes * (path.queue + path.window)) as u64 + LINK_REQUESTS_QUEUED;
                items.push(Item {
                    what: format!("command path {} (the link)", connector.name),
                    bytes: commands * COMMAND_BYTES,
                    how: format!(
                        "({} lanes x (queue {} + window {}) + {LINK_REQUESTS_QUEUED}) x \
                         {COMMAND_BYTES} B",
                        path.lanes, path.queue, path.window
                    ),
                });
            }
            other => return Err(format!("the bound knows no {other} connector")),
        }
    }
    for path in &plan.command_paths {
        let settings = path.path.settings();
        let commands = (settings.lanes * settings.queue) as u64;
        items.push(Item {
            what: format!("command path {}", path.name),
            bytes: commands * COMMAND_BYTES,
            how: format!(
                "{} lanes x queue {} x {COMMAND_BYTES} B",
                settings.lanes, settings.queue
            ),
        });
    }
    let pipeline = &config.pipeline;
    let per_event = EVENT_OVERHEAD + MESSAGE_COPIES * message;
    items.push(Item {
        what: "pipeline in flight".into(),
        bytes: pipeline.max_in_flight as u64 * per_event,
        how: format!(
            "max_in_flight {} x ({EVENT_OVERHEAD} + {MESSAGE_COPIES} x {message} B)",
            pipeline.max_in_flight
        ),
    });
    if config.twin.max_devices > 0 {
        // The twins themselves are in the idle size (the warm-up reaches every device); what
        // a flood adds is the commit's copy of the twins changed since the last: the state
        // writer serializes each changed device once, and every one of them was changed by
        // an event still in flight (none is acknowledged before that commit).
        items.push(Item {
            what: "twin writes awaiting commit".into(),
            bytes: pipeline.max_in_flight as u64 * TWIN_BYTES,
            how: format!("max_in_flight {} x {TWIN_BYTES} B", pipeline.max_in_flight),
        });
    }
    let per_id = 2 * offered.id_bytes.next_multiple_of(16) + DEDUP_ENTRY_OVERHEAD;
    items.push(Item {
        what: "dedup ids".into(),
        bytes: pipeline.dedup_capacity as u64 * per_id,
        how: format!(
            "dedup_capacity {} x (2 x {} + {DEDUP_ENTRY_OVERHEAD} B)",
            pipeline.dedup_capacity,
            offered.id_bytes.next_multiple_of(16)
        ),
    });
    Ok(items)
}
