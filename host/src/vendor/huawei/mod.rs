//! Placeholder, replaced by the huawei dialect.

use crate::event::Event;
use crate::vendor::{DecodeError, RawMessage};

/// Decodes huawei messages.
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
