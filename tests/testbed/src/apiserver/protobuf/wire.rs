//! The protobuf wire format of one message, field by field: decoding gives each field's value
//! keyed by its number (repeated fields as arrays, maps as objects, messages already in their
//! JSON form), encoding takes the same shape back. Fields this schema does not know are
//! skipped, as Go's decoders skip them.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use prost::encoding::{
    DecodeContext, WireType, decode_key, decode_varint, encode_key, encode_varint, skip_field,
};
use serde_json::{Map, Value};

use super::json;
use super::schema::{Cardinality, Kind, Message, message};

type Result<T> = std::result::Result<T, String>;

/// A message's fields by number.
pub(super) type Fields = BTreeMap<u32, Value>;

fn wire_type(kind: Kind) -> WireType {
    match kind {
        Kind::String | Kind::Bytes | Kind::Message(_) => WireType::LengthDelimited,
        Kind::Fixed32 | Kind::Sfixed32 | Kind::Float => WireType::ThirtyTwoBit,
        Kind::Fixed64 | Kind::Sfixed64 | Kind::Double => WireType::SixtyFourBit,
        _ => WireType::Varint,
    }
}

fn length_delimited<'a>(bytes: &mut &'a [u8]) -> Result<&'a [u8]> {
    let len = decode_varint(bytes).map_err(|e| e.to_string())?;
    let len = usize::try_from(len).map_err(|_| "a length does not fit".to_string())?;
    let (value, rest) = bytes
        .split_at_checked(len)
        .ok_or_else(|| format!("a length of {len} runs past the end"))?;
    *bytes = rest;
    Ok(value)
}

fn fixed<const N: usize>(bytes: &mut &[u8]) -> Result<[u8; N]> {
    let (value, rest) = bytes
        .split_first_chunk::<N>()
        .ok_or_else(|| "a fixed-size value runs past the end".to_string())?;
    *bytes = rest;
    Ok(*value)
}

fn number(f: f64) -> Result<Value> {
    serde_json::Number::from_f64(f)
        .map(Value::Number)
        .ok_or_else(|| format!("{f} has no JSON form"))
}

/// One value of `kind` sent with `wire`.
fn value(kind: Kind, wire: WireType, bytes: &mut &[u8], depth: usize) -> Result<Value> {
    if wire != wire_type(kind) {
        return Err(format!("a {kind:?} sent as {wire:?}"));
    }
    let varint = |bytes: &mut &[u8]| decode_varint(bytes).map_err(|e| e.to_string());
    Ok(match kind {
        Kind::String => {
            let raw = length_delimited(bytes)?;
            Value::String(
                std::str::from_utf8(raw)
                    .map_err(|_| "a string is not UTF-8".to_string())?
                    .to_string(),
            )
        }
        Kind::Bytes => Value::String(BASE64.encode(length_delimited(bytes)?)),
        Kind::Message(name) => {
            let message = message(name).ok_or_else(|| format!("no message {name}"))?;
            json::to_json(message, length_delimited(bytes)?, depth + 1)?
        }
        Kind::Bool => Value::Bool(varint(bytes)? != 0),
        Kind::Int32 => Value::from(varint(bytes)? as i64 as i32),
        Kind::Int64 => Value::from(varint(bytes)? as i64),
        Kind::Uint32 => Value::from(varint(bytes)? as u32),
        Kind::Uint64 => Value::from(varint(bytes)?),
        Kind::Sint32 | Kind::Sint64 => {
            let v = varint(bytes)?;
            Value::from(((v >> 1) as i64) ^ -((v & 1) as i64))
        }
        Kind::Fixed32 => Value::from(u32::from_le_bytes(fixed(bytes)?)),
        Kind::Sfixed32 => Value::from(i32::from_le_bytes(fixed(bytes)?)),
        Kind::Float => number(f64::from(f32::from_le_bytes(fixed(bytes)?)))?,
        Kind::Fixed64 => Value::from(u64::from_le_bytes(fixed(bytes)?)),
        Kind::Sfixed64 => Value::from(i64::from_le_bytes(fixed(bytes)?)),
        Kind::Double => number(f64::from_le_bytes(fixed(bytes)?))?,
    })
}

/// The value a map entry without a value has: the type's zero.
fn zero(kind: Kind, depth: usize) -> Result<Value> {
    Ok(match kind {
        Kind::String | Kind::Bytes => Value::String(String::new()),
        Kind::Bool => Value::Bool(false),
        Kind::Message(name) => json::to_json(
            message(name).ok_or_else(|| format!("no message {name}"))?,
            &[],
            depth + 1,
        )?,
        _ => Value::from(0),
    })
}

/// Decodes the fields of `m` from `bytes`.
pub(super) fn decode(m: &'static Message, mut bytes: &[u8], depth: usize) -> Result<Fields> {
    let mut fields = Fields::new();
    while !bytes.is_empty() {
        let (tag, wire) = decode_key(&mut bytes).map_err(|e| format!("{}: {e}", m.name))?;
        let Some(field) = m.fields.iter().find(|f| f.tag == tag) else {
            skip_field(wire, tag, &mut bytes, DecodeContext::default())
                .map_err(|e| format!("{}: {e}", m.name))?;
            continue;
        };
        let context = |e: String| format!("{}.{}: {e}", m.name, field.name);
        match field.cardinality {
            Cardinality::Optional => {
                let v = value(field.kind, wire, &mut bytes, depth).map_err(context)?;
                fields.insert(tag, v);
            }
            Cardinality::Repeated => {
                let items = match fields
                    .entry(tag)
                    .or_insert_with(|| Value::Array(Vec::new()))
                {
                    Value::Array(items) => items,
                    _ => return Err(context("not a list".into())),
                };
                let packed = wire == WireType::LengthDelimited
                    && wire_type(field.kind) != WireType::LengthDelimited;
                if packed {
                    let mut chunk = length_delimited(&mut bytes).map_err(context)?;
                    while !chunk.is_empty() {
                        let w = wire_type(field.kind);
                        items.push(value(field.kind, w, &mut chunk, depth).map_err(context)?);
                    }
                } else {
                    items.push(value(field.kind, wire, &mut bytes, depth).map_err(context)?);
                }
            }
            Cardinality::Map(key_kind) => {
                if wire != WireType::LengthDelimited {
                    return Err(context(format!("a map entry sent as {wire:?}")));
                }
                let mut entry = length_delimited(&mut bytes).map_err(context)?;
                let (mut key, mut val) = (None, None);
                while !entry.is_empty() {
                    let (t, w) = decode_key(&mut entry).map_err(|e| context(e.to_string()))?;
                    match t {
                        1 => key = Some(value(key_kind, w, &mut entry, depth).map_err(context)?),
                        2 => val = Some(value(field.kind, w, &mut entry, depth).map_err(context)?),
                        _ => skip_field(w, t, &mut entry, DecodeContext::default())
                            .map_err(|e| context(e.to_string()))?,
                    }
                }
                let key = match key {
                    Some(Value::String(s)) => s,
                    Some(other) => other.to_string(),
                    None => String::new(),
                };
                let val = match val {
                    Some(v) => v,
                    None => zero(field.kind, depth).map_err(context)?,
                };
                match fields
                    .entry(tag)
                    .or_insert_with(|| Value::Object(Map::new()))
                {
                    Value::Object(map) => {
                        map.insert(key, val);
                    }
                    _ => return Err(context("not a map".into())),
                }
            }
        }
    }
    Ok(fields)
}

fn encode_value(kind: Kind, tag: u32, v: &Value, depth: usize, out: &mut Vec<u8>) -> Result<()> {
    let int = |v: &Value| v.as_i64().ok_or_else(|| format!("{v} is not an integer"));
    let uint = |v: &Value| {
        v.as_u64()
            .ok_or_else(|| format!("{v} is not an unsigned integer"))
    };
    let float = |v: &Value| v.as_f64().ok_or_else(|| format!("{v} is not a number"));
    encode_key(tag, wire_type(kind), out);
    match kind {
        Kind::String => {
            let s = v.as_str().ok_or_else(|| format!("{v} is not a string"))?;
            encode_varint(s.len() as u64, out);
            out.extend_from_slice(s.as_bytes());
        }
        Kind::Bytes => {
            let s = v.as_str().ok_or_else(|| format!("{v} is not base64"))?;
            let raw = BASE64.decode(s).map_err(|e| format!("not base64: {e}"))?;
            encode_varint(raw.len() as u64, out);
            out.extend_from_slice(&raw);
        }
        Kind::Message(name) => {
            let m = message(name).ok_or_else(|| format!("no message {name}"))?;
            let raw = json::from_json(m, v, depth + 1)?;
            encode_varint(raw.len() as u64, out);
            out.extend_from_slice(&raw);
        }
        Kind::Bool => encode_varint(
            u64::from(v.as_bool().ok_or_else(|| format!("{v} is not a boolean"))?),
            out,
        ),
        Kind::Int32 => {
            let i = i32::try_from(int(v)?).map_err(|_| format!("{v} is not an int32"))?;
            encode_varint(i64::from(i) as u64, out);
        }
        Kind::Int64 => encode_varint(int(v)? as u64, out),
        Kind::Uint32 => {
            let u = u32::try_from(uint(v)?).map_err(|_| format!("{v} is not a uint32"))?;
            encode_varint(u64::from(u), out);
        }
        Kind::Uint64 => encode_varint(uint(v)?, out),
        Kind::Sint32 | Kind::Sint64 => {
            let i = int(v)?;
            encode_varint(((i << 1) ^ (i >> 63)) as u64, out);
        }
        Kind::Fixed32 => {
            let u = u32::try_from(uint(v)?).map_err(|_| format!("{v} is not a fixed32"))?;
            out.extend_from_slice(&u.to_le_bytes());
        }
        Kind::Sfixed32 => {
            let i = i32::try_from(int(v)?).map_err(|_| format!("{v} is not an sfixed32"))?;
            out.extend_from_slice(&i.to_le_bytes());
        }
        Kind::Float => out.extend_from_slice(&(float(v)? as f32).to_le_bytes()),
        Kind::Fixed64 => out.extend_from_slice(&uint(v)?.to_le_bytes()),
        Kind::Sfixed64 => out.extend_from_slice(&int(v)?.to_le_bytes()),
        Kind::Double => out.extend_from_slice(&float(v)?.to_le_bytes()),
    }
    Ok(())
}

/// Encodes `fields` as `m`, in field-number order as Go does (repeated fields unpacked, map
/// entries by key).
pub(super) fn encode(m: &'static Message, fields: &Fields, depth: usize) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for (tag, v) in fields {
        let Some(field) = m.fields.iter().find(|f| f.tag == *tag) else {
            continue;
        };
        let context = |e: String| format!("{}.{}: {e}", m.name, field.name);
        match field.cardinality {
            Cardinality::Optional => {
                encode_value(field.kind, *tag, v, depth, &mut out).map_err(context)?
            }
            Cardinality::Repeated => {
                let items = v
                    .as_array()
                    .ok_or_else(|| context(format!("{v} is not a list")))?;
                for item in items {
                    encode_value(field.kind, *tag, item, depth, &mut out).map_err(context)?;
                }
            }
            Cardinality::Map(key_kind) => {
                let map = v
                    .as_object()
                    .ok_or_else(|| context(format!("{v} is not a map")))?;
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                for key in keys {
                    let mut entry = Vec::new();
                    let key_value = match key_kind {
                        Kind::String => Value::String(key.clone()),
                        _ => serde_json::from_str(key).map_err(|e| context(e.to_string()))?,
                    };
                    encode_value(key_kind, 1, &key_value, depth, &mut entry).map_err(context)?;
                    encode_value(field.kind, 2, &map[key], depth, &mut entry).map_err(context)?;
                    encode_key(*tag, WireType::LengthDelimited, &mut out);
                    encode_varint(entry.len() as u64, &mut out);
                    out.extend_from_slice(&entry);
                }
            }
        }
    }
    Ok(out)
}
