//! A sweep's grid on a parsed training config: a grid field `NAME` sets every numeric field called
//! `NAME` anywhere in the config, the defaults the file left out included (so `lr` sets every group's
//! learning rate). The config is edited as data, through its serialized tree, and read back by the
//! same types that parsed it, so a value of the wrong kind is refused where it is set.

use serde_json::{Number, Value};

use super::config::TrainConfig;

/// `config` with every numeric field `field` set to `value`; an error when it has none, or when
/// `value` is not a whole number for a field that counts something.
pub fn set_field(config: &TrainConfig, field: &str, value: f64) -> Result<TrainConfig, String> {
    let mut tree = serde_json::to_value(config)
        .map_err(|e| format!("the config cannot be written as data: {e}"))?;
    let set = set_numbers(&mut tree, field, value)?;
    if set == 0 {
        return Err(format!(
            "grid field `{field}` is not a field with a number set in the config or its plugins' settings"
        ));
    }
    serde_json::from_value(tree).map_err(|e| format!("grid field `{field}` = {value}: {e}"))
}

/// Sets the numbers under key `field` in `tree`; how many it set.
fn set_numbers(tree: &mut Value, field: &str, value: f64) -> Result<usize, String> {
    match tree {
        Value::Object(map) => {
            let mut set = 0;
            for (key, child) in map.iter_mut() {
                if key == field && child.is_number() {
                    *child = Value::Number(same_kind(child, field, value)?);
                    set += 1;
                } else {
                    set += set_numbers(child, field, value)?;
                }
            }
            Ok(set)
        }
        Value::Array(items) => items
            .iter_mut()
            .try_fold(0, |set, item| Ok(set + set_numbers(item, field, value)?)),
        _ => Ok(0),
    }
}

/// `value` as the kind of number `old` is: a count stays a whole number.
fn same_kind(old: &Value, field: &str, value: f64) -> Result<Number, String> {
    if old.is_f64() {
        return Number::from_f64(value)
            .ok_or_else(|| format!("grid field `{field}` takes {value}, which is not finite"));
    }
    let whole = value.fract() == 0.0 && value.abs() < 2f64.powi(53);
    match (whole, old.is_u64()) {
        (true, true) if value >= 0.0 => Ok(Number::from(value as u64)),
        (true, false) => Ok(Number::from(value as i64)),
        _ => Err(format!(
            "grid field `{field}` counts something; {value} is not a whole number ≥ 0"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn every_field_of_the_name_is_set_and_others_are_not() {
        let mut t = tree(
            r#"{"groups": [{"optimizer": {"type": "Muon", "cfg": {"lr": 0.1, "max_lr": 3.0}}},
                           {"optimizer": {"type": "AdamW", "cfg": {"lr": 0.2}}}],
                "lr": "a string stays", "steps": 10}"#,
        );
        assert_eq!(set_numbers(&mut t, "lr", 0.5), Ok(2));
        assert_eq!(t["groups"][0]["optimizer"]["cfg"]["lr"], 0.5);
        assert_eq!(t["groups"][1]["optimizer"]["cfg"]["lr"], 0.5);
        assert_eq!(t["groups"][0]["optimizer"]["cfg"]["max_lr"], 3.0);
        assert_eq!(t["lr"], "a string stays");
        assert_eq!(set_numbers(&mut t, "wd", 0.1), Ok(0));
    }

    #[test]
    fn a_count_takes_whole_numbers_only() {
        let mut t = tree(r#"{"steps": 10, "w_max": 2.0}"#);
        assert_eq!(set_numbers(&mut t, "steps", 20.0), Ok(1));
        assert_eq!(t["steps"], 20);
        assert!(t["steps"].is_u64());
        let err = set_numbers(&mut t, "steps", 2.5).unwrap_err();
        assert!(err.contains("whole number"), "{err}");
        assert!(set_numbers(&mut t, "steps", -1.0).is_err());
        assert_eq!(set_numbers(&mut t, "w_max", 4.0), Ok(1));
        assert!(t["w_max"].is_f64());
    }
}
