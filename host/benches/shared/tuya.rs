//! The Tuya messages that `bench decode` and `examples/prof_decode.rs` decode, so that the
//! profile is of the bench's message.

/// A typical protocol-4 status: three datapoints, like the vendor's own examples.
pub const STATUS: &str = r#"{"dataId":"16QmtsL4F28GzL2cEpVZzAQl","devId":"vdevxJ4SXRVxfCQG","productKey":"gXkH1zxF","status":[{"2":"white","code":"work_mode","t":1631545543536,"value":"white"},{"3":"764","code":"bright_value_v2","t":1631545543536,"value":764},{"code":"temp_current","t":1631545543536,"value":23.5,"4":"23.5"}]}"#;

/// A Smart Business device report with one datapoint.
pub const BUSINESS: &str = r#"{"bizCode":"device","eventType":"dp_report","data":{"devId":"BI1oOZSHCoHPbzRKZuQO","productId":"BdVti9n4dte2et68","dataId":"tVkAKqiaJ42cL0n95KDk03","namespace":"3XTNGcymwgnKR5BLmFg8QysGFbuN3","status":[{"code":"switch_1","value":"true","time":1631545543536}]}}"#;
