//! Which devices a step watches: by id or id pattern, or by product.

use iotrules_plugin_sdk::Device;

/// The devices named in the configuration. Empty: every device the rule passes the step.
#[derive(Debug, Default)]
pub(crate) struct Selection {
    /// Device ids, or patterns of them with `*` (any run of characters) and `?` (any one).
    pub(crate) devices: Vec<String>,
    /// Products whose every device is selected.
    pub(crate) products: Vec<String>,
}

impl Selection {
    /// Whether the selection names this device (any device when it names none).
    pub(crate) fn includes(&self, device: &Device) -> bool {
        if self.devices.is_empty() && self.products.is_empty() {
            return true;
        }
        self.devices.iter().any(|pattern| glob(pattern, &device.id))
            || device
                .product
                .as_ref()
                .is_some_and(|p| self.products.contains(p))
    }
}

/// Whether `text` matches `pattern`, where `*` matches any run of characters (also none) and
/// `?` any one character; every other character matches itself.
///
/// The usual two-pointer match: on a mismatch, go back to the last `*` and let it swallow one
/// more character. Linear in practice, never exponential.
pub(crate) fn glob(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == '?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_stars_and_question_marks() {
        assert!(glob("freezer-*", "freezer-1"));
        assert!(glob("freezer-*", "freezer-"));
        assert!(!glob("freezer-*", "fridge-1"));
        assert!(glob("*-pir-?", "hall-pir-2"));
        assert!(!glob("*-pir-?", "hall-pir-12"));
        assert!(glob("a*b*c", "aXXbYYbZc"));
        assert!(!glob("a*b*c", "aXXbYY"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exactly"));
        assert!(glob("*", ""));
    }

    #[test]
    fn a_selection_takes_ids_patterns_and_products() {
        let selection = Selection {
            devices: vec!["meter-*".into(), "pump-7".into()],
            products: vec!["a1Freezer".into()],
        };
        assert!(selection.includes(&Device::new("meter-3")));
        assert!(selection.includes(&Device::new("pump-7")));
        assert!(selection.includes(&Device::new("x").with_product("a1Freezer")));
        assert!(!selection.includes(&Device::new("pump-8").with_product("other")));
        assert!(Selection::default().includes(&Device::new("anything")));
    }
}
