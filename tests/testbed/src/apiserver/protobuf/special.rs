//! The messages whose JSON form is not an object of their fields: times, durations,
//! quantities, int-or-strings, embedded JSON (`RawExtension`, `FieldsV1`, apiextensions'
//! `JSON`), the schema-or-list unions of apiextensions, and lists wrapped in a message
//! (`Verbs`, `ExtraValue`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;

use super::schema::{Cardinality, Message};
use super::wire::Fields;

type Result<T> = std::result::Result<T, String>;

const META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.";

/// Which JSON form a message has.
enum Form {
    Time,
    MicroTime,
    Duration,
    Quantity,
    IntOrString,
    /// Field 1 holds JSON bytes (or a protobuf object in its `k8s\0` envelope).
    EmbeddedJson,
    /// Field 1 a schema, field 2 a list of schemas.
    SchemaOrArray,
    /// Field 1 a boolean, field 2 a schema.
    SchemaOrBool,
    /// Field 1 a schema, field 2 a list of strings.
    SchemaOrStrings,
    /// Field 1 the list.
    List,
}

fn form(m: &Message) -> Option<Form> {
    let type_name = m.name.rsplit('.').next().unwrap_or_default();
    let apiextensions = m.name.contains(".apiextensions-apiserver.");
    let meta = m.name.strip_prefix(META);
    Some(match m.name {
        _ if meta == Some("Time") => Form::Time,
        _ if meta == Some("MicroTime") => Form::MicroTime,
        _ if meta == Some("Duration") => Form::Duration,
        _ if meta == Some("FieldsV1") => Form::EmbeddedJson,
        "io.k8s.apimachinery.pkg.api.resource.Quantity" => Form::Quantity,
        "io.k8s.apimachinery.pkg.util.intstr.IntOrString" => Form::IntOrString,
        "io.k8s.apimachinery.pkg.runtime.RawExtension" => Form::EmbeddedJson,
        _ if apiextensions && type_name == "Json" => Form::EmbeddedJson,
        _ if apiextensions && type_name == "JsonSchemaPropsOrArray" => Form::SchemaOrArray,
        _ if apiextensions && type_name == "JsonSchemaPropsOrBool" => Form::SchemaOrBool,
        _ if apiextensions && type_name == "JsonSchemaPropsOrStringArray" => Form::SchemaOrStrings,
        _ if matches!(m.fields, [f] if f.name == "items" && f.cardinality == Cardinality::Repeated) => {
            Form::List
        }
        _ => return None,
    })
}

fn int(fields: &Fields, tag: u32) -> i64 {
    fields.get(&tag).and_then(Value::as_i64).unwrap_or(0)
}

fn time(fields: &Fields, micro: bool) -> Result<Value> {
    // Go writes a zero time as an empty message; it is unset.
    if fields.is_empty() {
        return Ok(Value::Null);
    }
    let nanos = u32::try_from(int(fields, 2)).map_err(|_| "nanos out of range".to_string())?;
    let t = DateTime::<Utc>::from_timestamp(int(fields, 1), nanos)
        .ok_or_else(|| "a time out of range".to_string())?;
    let format = if micro {
        SecondsFormat::Micros
    } else {
        SecondsFormat::Secs
    };
    Ok(Value::String(t.to_rfc3339_opts(format, true)))
}

/// Go's `time.Duration.String()`: `1h2m3s`, `1.5s`, `300ms`, `0s`.
fn go_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    let fraction = |value: u64, unit: u64, suffix: &str| {
        let whole = value / unit;
        let rest = value % unit;
        if rest == 0 {
            format!("{whole}{suffix}")
        } else {
            let digits = unit.ilog10() as usize;
            let text = format!("{rest:0digits$}");
            format!("{whole}.{}{suffix}", text.trim_end_matches('0'))
        }
    };
    if n < 1_000 {
        return format!("{sign}{n}ns");
    }
    if n < 1_000_000 {
        return format!("{sign}{}", fraction(n, 1_000, "µs"));
    }
    if n < 1_000_000_000 {
        return format!("{sign}{}", fraction(n, 1_000_000, "ms"));
    }
    let seconds = fraction(n % 60_000_000_000, 1_000_000_000, "s");
    let minutes = n / 60_000_000_000;
    match (minutes / 60, minutes % 60) {
        (0, 0) => format!("{sign}{seconds}"),
        (0, m) => format!("{sign}{m}m{seconds}"),
        (h, m) => format!("{sign}{h}h{m}m{seconds}"),
    }
}

/// Parses what [`go_duration`] prints (and Go's other units: `us`, `ns`).
fn parse_go_duration(text: &str) -> Result<i64> {
    let bad = || format!("{text:?} is not a duration");
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (number, after) = rest.split_at(number_len);
        let value: f64 = number.parse().map_err(|_| bad())?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        total += value * scale;
        rest = after;
    }
    if total > i64::MAX as f64 {
        return Err(bad());
    }
    let nanos = total.round() as i64;
    Ok(if negative { -nanos } else { nanos })
}

fn embedded(fields: &Fields) -> Result<Value> {
    let raw = match fields.get(&1).and_then(Value::as_str) {
        Some(b64) => BASE64.decode(b64).map_err(|e| e.to_string())?,
        None => return Ok(Value::Null),
    };
    if raw.is_empty() {
        return Ok(Value::Null);
    }
    if raw.starts_with(super::MAGIC) {
        return super::decode_object(&raw).map_err(|e| e.message);
    }
    serde_json::from_slice(&raw).map_err(|e| format!("embedded JSON does not parse: {e}"))
}

/// The JSON form of `m` from its decoded fields, if `m` has a form of its own.
pub(super) fn to_json(m: &Message, fields: &Fields) -> Result<Option<Value>> {
    let Some(form) = form(m) else {
        return Ok(None);
    };
    let field = |tag| fields.get(&tag).cloned();
    Ok(Some(match form {
        Form::Time => time(fields, false)?,
        Form::MicroTime => time(fields, true)?,
        Form::Duration => Value::String(go_duration(int(fields, 1))),
        Form::Quantity => field(1).unwrap_or_else(|| Value::String("0".into())),
        Form::IntOrString if int(fields, 1) == 1 => {
            field(3).unwrap_or_else(|| Value::String(String::new()))
        }
        Form::IntOrString => field(2).unwrap_or_else(|| Value::from(0)),
        Form::EmbeddedJson => embedded(fields)?,
        Form::SchemaOrArray | Form::SchemaOrStrings => match field(2) {
            Some(Value::Array(items)) if !items.is_empty() => Value::Array(items),
            _ => field(1).unwrap_or(Value::Null),
        },
        Form::SchemaOrBool => match field(2) {
            Some(schema) => schema,
            None => field(1).unwrap_or(Value::Bool(false)),
        },
        Form::List => field(1).unwrap_or_else(|| Value::Array(Vec::new())),
    }))
}

/// The fields of `m` for its JSON form `v`, if `m` has a form of its own.
pub(super) fn from_json(m: &Message, v: &Value) -> Result<Option<Fields>> {
    let Some(form) = form(m) else {
        return Ok(None);
    };
    let mut fields = Fields::new();
    let wrong = || format!("{}: {v} is not of its JSON form", m.name);
    match form {
        Form::Time | Form::MicroTime => {
            let text = v.as_str().ok_or_else(wrong)?;
            let t = DateTime::parse_from_rfc3339(text).map_err(|_| wrong())?;
            // Go writes both, zero or not.
            fields.insert(1, Value::from(t.timestamp()));
            fields.insert(2, Value::from(t.timestamp_subsec_nanos()));
        }
        Form::Duration => {
            let nanos = parse_go_duration(v.as_str().ok_or_else(wrong)?)?;
            fields.insert(1, Value::from(nanos));
        }
        Form::Quantity => {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return Err(wrong()),
            };
            fields.insert(1, Value::String(text));
        }
        // Go writes all three fields.
        Form::IntOrString => match v {
            Value::Number(_) => {
                fields.insert(1, Value::from(0));
                fields.insert(2, v.clone());
                fields.insert(3, Value::String(String::new()));
            }
            Value::String(_) => {
                fields.insert(1, Value::from(1));
                fields.insert(2, Value::from(0));
                fields.insert(3, v.clone());
            }
            _ => return Err(wrong()),
        },
        Form::EmbeddedJson => {
            let raw = serde_json::to_vec(v).map_err(|e| e.to_string())?;
            fields.insert(1, Value::String(BASE64.encode(raw)));
        }
        Form::SchemaOrArray | Form::SchemaOrStrings => match v {
            Value::Array(_) => {
                fields.insert(2, v.clone());
            }
            _ => {
                fields.insert(1, v.clone());
            }
        },
        Form::SchemaOrBool => match v {
            Value::Bool(_) => {
                fields.insert(1, v.clone());
            }
            _ => {
                fields.insert(1, Value::Bool(true));
                fields.insert(2, v.clone());
            }
        },
        Form::List => {
            fields.insert(1, v.clone());
        }
    }
    Ok(Some(fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_and_parse_as_go_does() {
        for (nanos, text) in [
            (0, "0s"),
            (1_500_000_000, "1.5s"),
            (300_000_000, "300ms"),
            (90_000_000_000, "1m30s"),
            (3_600_000_000_000, "1h0m0s"),
            (3_723_000_000_000, "1h2m3s"),
            (1_500, "1.5µs"),
            (-2_000_000_000, "-2s"),
        ] {
            assert_eq!(go_duration(nanos), text);
            assert_eq!(parse_go_duration(text), Ok(nanos), "{text}");
        }
        assert!(parse_go_duration("1x").is_err());
        assert!(parse_go_duration("").is_err());
    }
}
