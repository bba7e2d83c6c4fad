//! Config text for a service under load (the soak and the flood): the two connectors both
//! run, with the credentials their peers expect.

/// The Tuya access id and key the load seals its Pulsar messages with.
pub const TUYA_ID: &str = "soak4accessid00";
pub const TUYA_KEY: &str = "soakkey0123456789abcdefzz770";
/// The login of the service's MQTT link (and the load's) on mosquitto.
pub const LOCAL: (&str, &str) = ("local", "local-password");

/// A `tuya-pulsar` connector named `tuya` on the broker at `url`, signatures enforced. The
/// table stays open: settings of its own may follow.
pub fn tuya_connector(url: &str) -> String {
    format!(
        r#"
[[connector]]
name = "tuya"
kind = "tuya-pulsar"
access_id = "{TUYA_ID}"
access_key = "{TUYA_KEY}"
url = "{url}"
sign = "enforce"
"#
    )
}

/// A generic `mqtt` link named `m` on the mosquitto at `url`: it takes the devices' messages
/// on `in/{device}` and sends their commands to `out/{device}`.
pub fn mqtt_link(url: &str) -> String {
    format!(
        r#"
[[connector]]
name = "m"
kind = "mqtt"
url = "{url}"
username = "{user}"
password = "{password}"
subscribe = ["in/#"]
device_topic = "in/{{device}}"
publish_topic = "out/{{device}}"
"#,
        user = LOCAL.0,
        password = LOCAL.1,
    )
}
