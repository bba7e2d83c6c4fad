//! Config text for a service under load (the soak and the flood, the MQTT tests and bench):
//! the connectors they run, with the credentials their peers expect, and their echo rules.

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
    mqtt_table("m", url, LOCAL, "in/#", "in/{device}", "out/{device}")
}

/// A generic `mqtt` link `name` on the broker at `url`, logged in as `login` (username,
/// password), subscribed to `subscribe`, with its `device_topic` and `publish_topic`. The
/// table stays open: settings of its own may follow.
pub fn mqtt_table(
    name: &str,
    url: &str,
    login: (&str, &str),
    subscribe: &str,
    device_topic: &str,
    publish_topic: &str,
) -> String {
    format!(
        r#"
[[connector]]
name = "{name}"
kind = "mqtt"
url = "{url}"
username = "{user}"
password = "{password}"
subscribe = ["{subscribe}"]
device_topic = "{device_topic}"
publish_topic = "{publish_topic}"
"#,
        user = login.0,
        password = login.1,
    )
}

/// A rule `name` answering every event of the MQTT link `link` on the link itself, with the
/// `echo` plugin's command `set` (params `{"seq": N}`).
pub fn echo_back(name: &str, link: &str) -> String {
    echo_back_with(name, link, "")
}

/// [`echo_back`] with `step` added to its step's settings (`deadline_ms = 2000`, say).
pub fn echo_back_with(name: &str, link: &str, step: &str) -> String {
    format!(
        r#"
[[rule]]
name = "{name}"
when = {{ source = "{link}", vendor = "mqtt" }}
commands.via = "{link}"

[[rule.step]]
plugin = "echo"
config = {{ command = "set" }}
{step}
"#
    )
}
