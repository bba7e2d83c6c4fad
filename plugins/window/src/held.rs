//! The held mode's condition: when a property's value counts as "the condition holds".

use iotrules_plugin_sdk::Value;
use serde::{Deserialize, Serialize};

/// The `held` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HeldSettings {
    pub(crate) property: String,
    #[serde(default)]
    above: Option<f64>,
    #[serde(default)]
    below: Option<f64>,
    #[serde(default)]
    equals: Option<serde_json::Value>,
    pub(crate) for_s: u64,
}

impl HeldSettings {
    /// Refuses a condition that can never, or always, hold.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.property.is_empty() {
            return Err("config: `held.property`: name the property to watch".to_owned());
        }
        if self.above.is_none() && self.below.is_none() && self.equals.is_none() {
            return Err(
                "config: `held`: give the condition: `above`, `below` (both: between) or `equals`"
                    .to_owned(),
            );
        }
        if self.equals.is_some() && (self.above.is_some() || self.below.is_some()) {
            return Err(
                "config: `held.equals`: not with `above` or `below`; a value that equals one number is never above or below another"
                    .to_owned(),
            );
        }
        for (field, bound) in [("above", self.above), ("below", self.below)] {
            if bound.is_some_and(|b| !b.is_finite()) {
                return Err(format!("config: `held.{field}`: must be a finite number"));
            }
        }
        if let (Some(above), Some(below)) = (self.above, self.below)
            && above >= below
        {
            return Err(format!(
                "config: `held`: `above` ({above}) must be less than `below` ({below}): no value is both"
            ));
        }
        Ok(())
    }

    /// Whether `value` meets the condition; `None` when it cannot tell (a bound on a value
    /// that is not a number), which leaves the step's view of the device as it was.
    pub(crate) fn holds(&self, value: &Value) -> Option<bool> {
        if let Some(expected) = &self.equals {
            return Some(value.matches_json(expected));
        }
        let number = value.as_f64().filter(|n| n.is_finite())?;
        Some(self.above.is_none_or(|a| number > a) && self.below.is_none_or(|b| number < b))
    }

    /// The condition in words, for the emitted event: `above -10`, `above 2 and below 8`.
    pub(crate) fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(above) = self.above {
            parts.push(format!("above {above}"));
        }
        if let Some(below) = self.below {
            parts.push(format!("below {below}"));
        }
        if let Some(equals) = &self.equals {
            parts.push(format!("equals {equals}"));
        }
        parts.join(" and ")
    }
}

/// What the step remembers of a device whose condition holds (no key while it does not).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct Holding {
    /// When the condition began to hold.
    pub(crate) since_ms: u64,
    /// Whether it was emitted: it is not again until the condition has stopped holding.
    pub(crate) emitted: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(json: serde_json::Value) -> HeldSettings {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn bounds_are_strict_and_combine_into_a_range() {
        let above = held(serde_json::json!({"property": "t", "above": -10, "for_s": 600}));
        assert_eq!(above.holds(&Value::Float(-9.5)), Some(true));
        assert_eq!(above.holds(&Value::Integer(-10)), Some(false));
        assert_eq!(above.holds(&Value::Text("warm".into())), None);
        assert_eq!(above.describe(), "above -10");
        let range = held(serde_json::json!({"property": "t", "above": 2, "below": 8, "for_s": 1}));
        assert_eq!(range.holds(&Value::Integer(5)), Some(true));
        assert_eq!(range.holds(&Value::Integer(8)), Some(false));
        assert_eq!(range.describe(), "above 2 and below 8");
    }

    #[test]
    fn equals_compares_by_meaning() {
        let door = held(serde_json::json!({"property": "door", "equals": "open", "for_s": 60}));
        assert_eq!(door.holds(&Value::Text("open".into())), Some(true));
        assert_eq!(door.holds(&Value::Text("closed".into())), Some(false));
        assert_eq!(door.describe(), "equals \"open\"");
    }

    #[test]
    fn impossible_conditions_are_refused() {
        let check = |json| held(json).check().unwrap_err();
        assert!(
            check(serde_json::json!({"property": "t", "for_s": 1})).contains("give the condition")
        );
        assert!(
            check(serde_json::json!({"property": "t", "above": 8, "below": 2, "for_s": 1}))
                .contains("no value is both")
        );
        assert!(
            check(serde_json::json!({"property": "t", "above": 1, "equals": 3, "for_s": 1}))
                .starts_with("config: `held.equals`")
        );
    }
}
