//! Flattens one JSON object into `(name, value)` pairs without allocating where the input allows: keys and
//! string values borrow from the request body unless they hold escapes. Nested objects become dotted names
//! (`{"a":{"b":1}}` gives `a.b = 1`), arrays stay JSON text, `null` is dropped, and numbers and booleans
//! keep their JSON spelling.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// A flattened field: name and value, borrowed from the input where possible.
pub(crate) type Pair<'de> = (Cow<'de, str>, Cow<'de, str>);

/// Parses `line` as one JSON object into `out`.
pub(crate) fn flatten_object<'de>(line: &'de str, out: &mut Vec<Pair<'de>>) -> Result<(), serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(line);
    ObjectSeed { prefix: None, out }.deserialize(&mut de)?;
    de.end()
}

struct ObjectSeed<'a, 'de> {
    prefix: Option<&'a str>,
    out: &'a mut Vec<Pair<'de>>,
}

impl<'de> DeserializeSeed<'de> for ObjectSeed<'_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ObjectSeed<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(BorrowedStr(key)) = map.next_key()? {
            let name = match self.prefix {
                Some(prefix) => Cow::Owned(format!("{prefix}.{key}")),
                None => key,
            };
            map.next_value_seed(ValueSeed { name, out: self.out })?;
        }
        Ok(())
    }
}

/// A string that borrows from the input when it can.
pub(crate) struct BorrowedStr<'de>(pub(crate) Cow<'de, str>);

impl<'de: 'a, 'a> de::Deserialize<'de> for BorrowedStr<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = BorrowedStr<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(BorrowedStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(BorrowedStr(Cow::Owned(v.to_string())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(BorrowedStr(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(V(std::marker::PhantomData))
    }
}

/// A JSON scalar as text: strings as they are, numbers and booleans in JSON spelling, null as `None`.
/// Objects and arrays are kept as compact JSON text.
pub(crate) struct ScalarText<'de>(pub(crate) Option<Cow<'de, str>>);

impl<'de: 'a, 'a> de::Deserialize<'de> for ScalarText<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut out: Vec<Pair<'de>> = Vec::with_capacity(1);
        deserializer.deserialize_any(ValueVisitor { name: Cow::Borrowed(""), out: &mut out, nest: false })?;
        Ok(ScalarText(out.pop().map(|(_, v)| v)))
    }
}

struct ValueSeed<'a, 'de> {
    name: Cow<'de, str>,
    out: &'a mut Vec<Pair<'de>>,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(ValueVisitor { name: self.name, out: self.out, nest: true })
    }
}

struct ValueVisitor<'a, 'de> {
    name: Cow<'de, str>,
    out: &'a mut Vec<Pair<'de>>,
    /// Flatten nested objects into dotted names (true) or keep them as JSON text (false).
    nest: bool,
}

impl<'de> ValueVisitor<'_, 'de> {
    fn push(self, value: Cow<'de, str>) {
        self.out.push((self.name, value));
    }
}

impl<'de> Visitor<'de> for ValueVisitor<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<(), E> {
        self.push(Cow::Borrowed(v));
        Ok(())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.push(Cow::Owned(v.to_string()));
        Ok(())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<(), E> {
        self.push(Cow::Owned(v));
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.push(Cow::Borrowed(if v { "true" } else { "false" }));
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.push(Cow::Owned(v.to_string()));
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.push(Cow::Owned(v.to_string()));
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.push(Cow::Owned(serde_json::Number::from_f64(v).map(|n| n.to_string()).unwrap_or_default()));
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<serde_json::Value>()? {
            items.push(item);
        }
        self.push(Cow::Owned(serde_json::Value::Array(items).to_string()));
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        if self.nest {
            let prefix = self.name;
            return ObjectSeed { prefix: Some(&prefix), out: self.out }.visit_map(map);
        }
        let value = serde_json::Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
        self.push(Cow::Owned(value.to_string()));
        Ok(())
    }
}

use serde::Deserialize as _;

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(s: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        flatten_object(s, &mut out).unwrap();
        out.into_iter().map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
    }

    #[test]
    fn flattens_nested_objects_and_keeps_scalars_as_text() {
        let got = flat(r#"{"a":"x","n":{"b":1,"c":{"d":true}},"arr":[1,"2"],"z":null,"f":1.5,"e":"q\"uote"}"#);
        let want: Vec<(String, String)> =
            [("a", "x"), ("n.b", "1"), ("n.c.d", "true"), ("arr", r#"[1,"2"]"#), ("f", "1.5"), ("e", "q\"uote")]
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn borrows_unescaped_strings() {
        let line = r#"{"msg":"plain"}"#;
        let mut out = Vec::new();
        flatten_object(line, &mut out).unwrap();
        assert!(matches!(out[0].1, Cow::Borrowed("plain")));
    }

    #[test]
    fn rejects_non_objects_and_trailing_garbage() {
        let mut out = Vec::new();
        assert!(flatten_object("[1]", &mut out).is_err());
        assert!(flatten_object(r#"{"a":1} x"#, &mut out).is_err());
        assert!(flatten_object(r#"{"a":"#, &mut out).is_err());
    }
}
