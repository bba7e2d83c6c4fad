//! Placeholder, replaced by the Tuya dialect.

use crate::event::Event;
use crate::vendor::{DecodeError, RawMessage};

#[derive(Debug, Clone, Default)]
pub struct Decoder;
#[derive(Debug, Clone, Default)]
pub struct BusinessDecoder;

impl Decoder {
    pub fn decode(&self, _m: &RawMessage<'_>) -> Result<Event, DecodeError> {
        Err(DecodeError::unsupported("vendor", "tuya"))
    }
    pub fn decrypt(&self, _m: &RawMessage<'_>) -> Result<((), Vec<u8>), DecodeError> {
        Err(DecodeError::unsupported("vendor", "tuya"))
    }
}
impl BusinessDecoder {
    pub fn decode(&self, _m: &RawMessage<'_>) -> Result<Event, DecodeError> {
        Err(DecodeError::unsupported("vendor", "tuya"))
    }
    pub fn decrypt(&self, _m: &RawMessage<'_>) -> Result<((), Vec<u8>), DecodeError> {
        Err(DecodeError::unsupported("vendor", "tuya"))
    }
}
