//! Huawei Cloud IoTDA: server-side AMQP push and device-side MQTT.
//!
//! - [`mqtt`]: a device's connection credentials (client id, username, hour-stamped password)
//!   and its topics, legacy v1 (`/huawei/v1/devices/...`) and IoTDA (`$oc/devices/...`).
//! - [`reply`]: what a device publishes back: `deviceRsp`, IoTDA command and property
//!   responses, property reports.
//! - [`amqp`]: an application's credentials for the AMQP push endpoint.
//! - [`Decoder`]: not yet implemented.

pub mod amqp;
pub mod mqtt;
pub mod reply;

use crate::event::Event;
use crate::vendor::{DecodeError, RawMessage};

pub use amqp::AmqpCredentials;
pub use mqtt::{DeviceCredentials, HourStampError, SignType};
pub use reply::{Publish, ReplyError};

/// Decodes huawei messages (not yet: every message is refused as unsupported).
#[derive(Debug, Clone, Default)]
pub struct Decoder;

impl Decoder {
    pub fn new() -> Self {
        Decoder
    }

    pub fn decode(&self, _message: &RawMessage<'_>) -> Result<Event, DecodeError> {
        Err(DecodeError::unsupported("vendor", "huawei"))
    }
}
