//! The start-up plan: the config with every `[[connector]]` and `[[command_path]]` read by
//! its kind, once.
//!
//! `run`, `check`, `decode --connector` and `dead-letters replay` all start from a [`Plan`],
//! so a connector's settings are derived in one place and what `check` accepts is what `run`
//! starts. The plan is the one module that knows both registries of kinds
//! ([`crate::connector::KINDS`], [`crate::command::KINDS`]); `config` knows neither.

use std::path::Path;

use crate::command;
use crate::config::{Config, ConfigError};
use crate::connector;
use crate::plugin::GrantPolicy;

/// A config whose connectors and command paths are read and checked, ready to start.
#[derive(Debug)]
pub struct Plan {
    /// The config it was made from.
    pub config: Config,
    /// The connectors, in the file's order.
    pub connectors: Vec<connector::Planned>,
    /// The configured command paths, in the file's order (the MQTT links, which are command
    /// paths too, are among the connectors).
    pub command_paths: Vec<command::Planned>,
}

impl Plan {
    /// Reads every connector and command path of `config` by its kind.
    pub fn new(config: Config) -> Result<Plan, ConfigError> {
        let connectors = config
            .connectors
            .iter()
            .map(connector::plan)
            .collect::<Result<Vec<_>, _>>()?;
        let command_paths = config
            .command_paths
            .iter()
            .map(command::plan)
            .collect::<Result<Vec<_>, _>>()?;
        for table in &config.command_paths {
            let link = connectors
                .iter()
                .find(|c| c.connector.is_command_path() && c.name == table.name);
            if let Some(link) = link {
                return Err(table.invalid(format!(
                    "the {} connector of this name is already the command path \"{}\"",
                    link.kind, link.name
                )));
            }
        }
        Ok(Plan {
            config,
            connectors,
            command_paths,
        })
    }

    /// Reads and checks the config `file`, then plans it.
    pub fn load(file: &Path) -> Result<Plan, ConfigError> {
        Plan::new(Config::load(file)?)
    }

    /// Parses and checks `text`, read from `file`, then plans it.
    pub fn parse(file: &Path, text: &str) -> Result<Plan, ConfigError> {
        Plan::new(Config::parse(file, text)?)
    }

    /// The names commands can go `via`: every `[[command_path]]` and every connector that is
    /// also a command path (an MQTT link), sorted.
    pub fn command_path_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .command_paths
            .iter()
            .map(|p| p.name.clone())
            .chain(
                self.connectors
                    .iter()
                    .filter(|c| c.connector.is_command_path())
                    .map(|c| c.name.clone()),
            )
            .collect();
        names.sort();
        names
    }

    /// What rules may grant their plugins: nothing that reaches the config's secrets or the
    /// files the service reads (the config's own, and those its connectors and command paths
    /// name).
    pub fn grant_policy(&self) -> GrantPolicy {
        let connectors = self.connectors.iter().flat_map(|c| c.connector.files());
        let paths = self.command_paths.iter().flat_map(|p| p.path.files());
        GrantPolicy::from_config(&self.config).protecting(connectors.chain(paths))
    }

    /// The connector named `name`.
    pub fn connector(&self, name: &str) -> Option<&connector::Planned> {
        self.connectors.iter().find(|c| c.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::MINIMAL;
    use crate::dialect::DialectName;

    fn connector(toml: &str) -> Result<Plan, ConfigError> {
        Plan::parse(
            Path::new("/etc/iot/iotrules.toml"),
            &format!("[[connector]]\nname = \"c\"\n{toml}"),
        )
    }

    /// The identity of the plan's first connector at `now_ms`.
    fn identity(plan: &Plan, now_ms: u64) -> Vec<(String, String)> {
        plan.connectors[0].connector.identity(now_ms)
    }

    #[test]
    fn a_replay_s_files_resolve_from_the_config_file_and_paths_take_their_defaults() {
        let plan = Plan::parse(Path::new("/etc/iot/iotrules.toml"), MINIMAL).unwrap();
        assert_eq!(
            identity(&plan, 0),
            [("file".to_owned(), "/etc/iot/a.jsonl".to_owned())]
        );
        assert_eq!(plan.connectors[0].kind, "replay");
        assert_eq!(plan.connectors[0].dialect.kind(), DialectName::Huawei);
        assert_eq!(plan.command_paths[0].kind, "log");
    }

    #[test]
    fn errors_name_the_place() {
        let file = Path::new("c.toml");
        let kind = MINIMAL.replace("kind = \"replay\"", "kind = \"carrier-pigeon\"");
        let error = Plan::parse(file, &kind).unwrap_err().to_string();
        assert!(
            error.contains("line 6") && error.contains("carrier-pigeon"),
            "{error}"
        );

        let tuya = MINIMAL.replace("\"huawei\"", "\"tuya\"");
        let error = Plan::parse(file, &tuya).unwrap_err().to_string();
        assert_eq!(
            error,
            "connector \"a\": access_key is required for the Tuya dialects (the decryption key)"
        );

        let missing = MINIMAL.replace("file = \"a.jsonl\"", "file = \"${NO_SUCH_VAR_X}\"");
        let error = Plan::parse(file, &missing).unwrap_err().to_string();
        assert!(
            error.contains("line 8") && error.contains("NO_SUCH_VAR_X is not set"),
            "{error}"
        );

        let path = MINIMAL.replace("kind = \"log\"", "kind = \"carrier-pigeon\"");
        let error = Plan::parse(file, &path).unwrap_err().to_string();
        assert!(
            error.contains("line 11") && error.contains("unknown command_path kind"),
            "{error}"
        );
    }

    #[test]
    fn a_key_that_does_not_belong_to_the_kind_names_the_kind_and_the_key() {
        let file = Path::new("c.toml");
        let error = |text: &str| Plan::parse(file, text).unwrap_err().to_string();
        let region = MINIMAL.replace("file = \"a.jsonl\"", "file = \"a.jsonl\"\nregion = \"eu\"");
        let shown = error(&region);
        assert!(
            shown.starts_with(
                "c.toml: line 9, column 1: connector \"a\": a replay connector has no key \
                 `region` (it takes `access_id`"
            ),
            "{shown}"
        );
        let lanes = MINIMAL.replace("kind = \"log\"", "kind = \"log\"\nurl = \"http://x\"");
        let shown = error(&lanes);
        assert!(
            shown.contains("command_path \"out\": a log path has no key `url`"),
            "{shown}"
        );
        let shared = MINIMAL.replace("kind = \"log\"", "kind = \"log\"\nlanes = 0");
        assert_eq!(
            error(&shared),
            "command_path \"out\": lanes and queue must be at least 1"
        );
        let huawei = "kind = \"huawei-mqtt\"\nurl = \"mqtt://h:1\"\ndevice_id = \"d\"\n\
                      device_secret = \"s\"\nproduct_key = \"a1\"";
        let shown = connector(huawei).unwrap_err().to_string();
        assert!(
            shown.contains("a huawei-mqtt connector has no key `product_key`"),
            "{shown}"
        );
        let wrong_type =
            MINIMAL.replace("file = \"a.jsonl\"", "file = \"a.jsonl\"\nrate = \"fast\"");
        let shown = error(&wrong_type);
        assert!(
            shown.contains("line 9") && shown.contains("connector \"a\": invalid type"),
            "{shown}"
        );
    }

    const TUYA: &str = r#"
        kind = "tuya-pulsar"
        access_id = "p1234567890abcdef"
        access_key = "0123456789abcdef0123456789abcdef"
        region = "eu"
    "#;

    #[test]
    fn a_tuya_connector_derives_url_topic_and_subscription() {
        let plan = connector(TUYA).unwrap();
        assert_eq!(plan.connectors[0].dialect.kind(), DialectName::Tuya);
        let identity = identity(&plan, 0);
        let get = |key: &str| &identity.iter().find(|(k, _)| k == key).unwrap().1;
        assert_eq!(get("url"), "pulsar+ssl://mqe.tuyaeu.com:7285/");
        assert_eq!(get("topic"), "persistent://p1234567890abcdef/out/event");
        assert_eq!(get("subscription"), "p1234567890abcdef-sub");
        assert!(!format!("{identity:?}").contains("0123456789abcdef0123"));

        let test = connector(&format!(
            "{TUYA}\nenv = \"test\"\nsubscription_suffix = \"b\""
        ))
        .unwrap();
        let identity = super::tests::identity(&test, 0);
        assert!(identity.contains(&(
            "topic".into(),
            "persistent://p1234567890abcdef/out/event-test".into()
        )));
        assert!(identity.contains(&("subscription".into(), "p1234567890abcdef-b".into())));
    }

    #[test]
    fn cloud_connectors_name_what_is_missing_or_wrong() {
        let error = |toml: &str| connector(toml).unwrap_err().to_string();
        assert_eq!(
            error("kind = \"tuya-pulsar\"\naccess_key = \"0123456789abcdef0123456789\""),
            "connector \"c\": a tuya-pulsar connector needs `access_id`"
        );
        assert!(
            error(&TUYA.replace("region = \"eu\"", "region = \"mars\""))
                .contains("unknown Tuya region `mars`")
        );
        assert!(
            error(&format!("{TUYA}\ndialect = \"alibaba\""))
                .contains("a tuya-pulsar connector does not carry dialect \"alibaba\"")
        );
        assert!(error(&format!("{TUYA}\nurl = \"http://x\"")).contains("expected pulsar+ssl://"));
        assert!(
            error("kind = \"huawei-amqp\"\naccess_key = \"ak\"\naccess_code = \"c\"")
                .contains("needs `url`")
        );
        assert!(
            error("kind = \"alibaba-amqp\"\nurl = \"amqps://h:5671\"\nidle_timeout_s = 10")
                .contains("idle_timeout_s 10 is outside 30..=300")
        );
        assert_eq!(
            error("kind = \"replay\"\nfile = \"x\""),
            "connector \"c\": `dialect` is required for a replay connector"
        );
    }

    #[test]
    fn a_broker_url_of_another_scheme_is_refused_without_showing_its_password() {
        let error = |toml: &str| connector(toml).unwrap_err().to_string();
        let amqp = error(
            "kind = \"huawei-amqp\"\naccess_key = \"ak\"\naccess_code = \"c\"\n\
             url = \"http://u:s3cret@h\"",
        );
        assert!(amqp.contains("expected amqps://"), "{amqp}");
        assert!(!amqp.contains("s3cret"), "{amqp}");
        let pulsar = error(&format!("{TUYA}\nurl = \"pulsar+ssl://u:s3cret@h:7285\""));
        assert!(pulsar.contains("credentials do not belong"), "{pulsar}");
        assert!(!pulsar.contains("s3cret"), "{pulsar}");
        let hook = Plan::parse(
            Path::new("x.toml"),
            "[[command_path]]\nname = \"hook\"\nkind = \"webhook\"\n\
             url = \"https://ops:s3cret@hooks.example.com/in\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(hook.contains("credentials"), "{hook}");
        assert!(!hook.contains("s3cret"), "{hook}");
    }

    #[test]
    fn mqtt_links_derive_host_login_and_subscriptions_and_name_what_is_wrong() {
        let plan = connector(
            r#"
            kind = "alibaba-mqtt"
            product_key = "a1Pk"
            device_name = "lamp"
            device_secret = "device-secret-that-must-not-show"
            region = "cn-shanghai"
            user_topics = ["user/get"]
            "#,
        )
        .unwrap();
        let identity = identity(&plan, 7);
        let get = |key: &str| identity.iter().find(|(k, _)| k == key).unwrap().1.clone();
        assert_eq!(
            get("url"),
            "mqtts://a1Pk.iot-as-mqtt.cn-shanghai.aliyuncs.com:8883"
        );
        assert_eq!(
            get("client-id"),
            "a1Pk.lamp|securemode=2,signmethod=hmacsha256,timestamp=7|"
        );
        assert_eq!(get("username"), "lamp&a1Pk");
        assert!(get("subscriptions").contains("/sys/a1Pk/lamp/thing/service/property/set"));
        assert!(get("subscriptions").contains("/a1Pk/lamp/user/get"));
        assert!(!format!("{identity:?}").contains("device-secret-that-must-not-show"));

        let error = |toml: &str| connector(toml).unwrap_err().to_string();
        let huawei = "kind = \"huawei-mqtt\"\ndevice_id = \"d\"\ndevice_secret = \"s\"";
        assert!(error(huawei).contains("needs `url`"));
        assert!(error(&format!("{huawei}\nurl = \"mqtt://h:1\"\nqos = 2")).contains("QoS 0 or 1"));
        assert!(error(&format!("{huawei}\nurl = \"http://h\"")).contains("expected mqtts://"));
        let clash = format!(
            "{huawei}\nurl = \"mqtt://h:1\"\n[[command_path]]\nname = \"c\"\nkind = \"log\""
        );
        assert!(error(&clash).contains("already the command path"));
    }

    #[test]
    fn an_mqtt_link_is_a_command_path_name_beside_the_configured_paths() {
        let text = format!(
            "{MINIMAL}\n[[connector]]\nname = \"meter\"\nkind = \"huawei-mqtt\"\n\
             url = \"mqtt://h:1\"\ndevice_id = \"d\"\ndevice_secret = \"s\"\n"
        );
        let plan = Plan::parse(Path::new("/etc/iot/iotrules.toml"), &text).unwrap();
        assert_eq!(plan.command_path_names(), ["meter", "out"]);
    }
}
