//! The rule step's configuration, as the host hands it to `init`.

use serde::de::DeserializeOwned;

/// A rule step's `config` table, as JSON text.
///
/// In a rule file it is TOML (`config = { threshold = 0.5 }`); the host converts it to JSON
/// and passes `{}` when the step has none. Plugins parse it into their own `serde` type with
/// [`Config::parse`], whose errors name the field, because the operator sees them when a rule
/// is refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    json: String,
}

impl Config {
    /// Wraps the JSON text the host sent.
    pub fn new(json: impl Into<String>) -> Self {
        Config { json: json.into() }
    }

    /// The JSON text, as received.
    pub fn as_str(&self) -> &str {
        &self.json
    }

    /// Parses the configuration into `T`.
    ///
    /// An empty text reads as `{}`. Errors start with `config:`, name the field when there is
    /// one, and leave out the JSON line and column (the operator wrote TOML, not this JSON):
    ///
    /// ```
    /// use iotrules_plugin_sdk::Config;
    ///
    /// #[derive(serde::Deserialize)]
    /// struct Deadband { threshold: f64 }
    ///
    /// let err = Config::new(r#"{"thresold": 1}"#).parse::<Deadband>().err().unwrap();
    /// assert_eq!(err, "config: missing field `threshold`");
    /// let err = Config::new(r#"{"threshold": "high"}"#).parse::<Deadband>().err().unwrap();
    /// assert_eq!(err, r#"config: `threshold`: invalid type: string "high", expected f64"#);
    /// ```
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, String> {
        let text = if self.json.trim().is_empty() {
            "{}"
        } else {
            &self.json
        };
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let parsed = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
            let path = e.path().to_string();
            let message = without_position(e.inner());
            if path == "." {
                format!("config: {message}")
            } else {
                format!("config: `{path}`: {message}")
            }
        })?;
        deserializer
            .end()
            .map_err(|e| format!("config: {}", without_position(&e)))?;
        Ok(parsed)
    }
}

impl From<serde_json::Value> for Config {
    /// A configuration from a JSON tree, for tests: `Config::from(json!({"threshold": 0.5}))`.
    fn from(value: serde_json::Value) -> Self {
        Config::new(value.to_string())
    }
}

/// A `serde_json` error's message without its " at line L column C" suffix.
fn without_position(error: &serde_json::Error) -> String {
    let message = error.to_string();
    let suffix = format!(" at line {} column {}", error.line(), error.column());
    match message.strip_suffix(&suffix) {
        Some(stripped) => stripped.to_owned(),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Light {
        id: String,
        #[serde(default)]
        via: Option<String>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Conf {
        threshold: f64,
        #[serde(default)]
        lights: Vec<Light>,
    }

    #[test]
    fn missing_field_is_named_without_a_position() {
        let err = Config::new("{}").parse::<Conf>().unwrap_err();
        assert_eq!(err, "config: missing field `threshold`");
    }

    #[test]
    fn nested_errors_carry_the_path() {
        let err = Config::new(r#"{"threshold": 1, "lights": [{"id": "a"}, {"via": "x"}]}"#)
            .parse::<Conf>()
            .unwrap_err();
        assert_eq!(err, "config: `lights[1]`: missing field `id`");
        let err = Config::new(r#"{"threshold": 1, "lights": [{"id": 5}]}"#)
            .parse::<Conf>()
            .unwrap_err();
        assert_eq!(
            err,
            "config: `lights[0].id`: invalid type: integer `5`, expected a string"
        );
    }

    #[test]
    fn unknown_fields_are_named_when_the_type_denies_them() {
        let err = Config::new(r#"{"threshold": 1, "treshold": 2}"#)
            .parse::<Conf>()
            .unwrap_err();
        assert!(
            err.starts_with("config: `treshold`: unknown field `treshold`"),
            "{err}"
        );
    }

    #[test]
    fn empty_text_reads_as_an_empty_table() {
        #[derive(Deserialize)]
        struct Nothing {}
        assert!(Config::new("").parse::<Nothing>().is_ok());
        assert_eq!(
            Config::new(" ").parse::<Conf>().unwrap_err(),
            "config: missing field `threshold`"
        );
    }

    #[test]
    fn malformed_json_and_trailing_text_are_refused() {
        assert!(
            Config::new("{")
                .parse::<Conf>()
                .unwrap_err()
                .starts_with("config: ")
        );
        let err = Config::new(r#"{"threshold": 1} x"#)
            .parse::<Conf>()
            .unwrap_err();
        assert_eq!(err, "config: trailing characters");
    }

    #[test]
    fn parses_from_a_json_tree() {
        let conf: Conf = Config::from(serde_json::json!({"threshold": 0.5}))
            .parse()
            .unwrap();
        assert_eq!(conf.threshold, 0.5);
    }
}
