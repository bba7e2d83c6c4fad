//! Placeholder, replaced by the alibaba dialect.

use crate::event::Event;
use crate::vendor::{DecodeError, RawMessage};

/// Decodes alibaba messages.
#[derive(Debug, Clone, Default)]
pub struct Decoder;

impl Decoder {
    pub fn new(_body_base64: bool) -> Self {
        Decoder
    }

    pub fn decode(&self, _message: &RawMessage<'_>) -> Result<Event, DecodeError> {
        Err(DecodeError::unsupported("vendor", "alibaba"))
    }

    pub fn decrypt(&self, message: &RawMessage<'_>) -> Result<Vec<u8>, DecodeError> {
        Ok(message.payload.to_vec())
    }
}
