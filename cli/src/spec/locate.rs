//! Finds the line and column of a field in the spec text.
//!
//! serde_yaml knows the position of every node while it parses, but gives it out only on
//! errors. So to place a semantic problem (found after parsing) we parse again with a probe
//! that walks down the field path and fails on purpose at the node it is looking for: the
//! error then carries that node's position. No second YAML parser is needed, and the position
//! is exactly the one serde_yaml would report.

use super::diag::{Location, Seg};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// The message of the probe's deliberate error; nothing in a spec can produce it.
const FOUND: &str = "\u{0}pgswarm-locate-found";

/// Position of the node at `path`, or of its nearest ancestor that exists (a member written
/// as `- pg1` has no `name` node of its own, so the item itself is reported).
pub fn locate(text: &str, path: &[Seg]) -> Option<Location> {
    (0..=path.len())
        .rev()
        .find_map(|len| locate_exact(text, &path[..len]))
}

/// Position of the node at exactly `path`.
fn locate_exact(text: &str, path: &[Seg]) -> Option<Location> {
    let de = serde_yaml::Deserializer::from_str(text);
    match (Probe { path }).deserialize(de) {
        Err(err) if err.to_string().contains(FOUND) => err.location().map(|l| Location {
            line: l.line(),
            column: l.column(),
        }),
        _ => None,
    }
}

struct Probe<'p> {
    path: &'p [Seg],
}

impl Probe<'_> {
    fn leaf<E: de::Error>(&self) -> Result<(), E> {
        if self.path.is_empty() {
            Err(E::custom(FOUND))
        } else {
            Ok(())
        }
    }
}

impl<'de> DeserializeSeed<'de> for Probe<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Probe<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML node")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.leaf()
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.leaf()
    }
    fn visit_i128<E: de::Error>(self, _: i128) -> Result<(), E> {
        self.leaf()
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.leaf()
    }
    fn visit_u128<E: de::Error>(self, _: u128) -> Result<(), E> {
        self.leaf()
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.leaf()
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.leaf()
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.leaf()
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.leaf()
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        // Tagged values (`!tag x`) are not part of a spec; report the node itself.
        Err(de::Error::custom(FOUND))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        match self.path.split_first() {
            None => Err(de::Error::custom(FOUND)),
            Some((Seg::Index(target), rest)) => {
                let mut i = 0;
                loop {
                    if i == *target {
                        return seq.next_element_seed(Probe { path: rest }).map(|_| ());
                    }
                    if seq.next_element::<IgnoredAny>()?.is_none() {
                        return Ok(());
                    }
                    i += 1;
                }
            }
            Some((Seg::Key(_), _)) => {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(())
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        match self.path.split_first() {
            None => Err(de::Error::custom(FOUND)),
            Some((Seg::Key(target), rest)) => {
                while let Some(key) = map.next_key::<serde_yaml::Value>()? {
                    if key.as_str() == Some(target.as_str()) {
                        return map.next_value_seed(Probe { path: rest });
                    }
                    map.next_value::<IgnoredAny>()?;
                }
                Ok(())
            }
            Some((Seg::Index(_), _)) => {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "name: demo\netcd:\n  members: 2\nmembers:\n  - pg1\n  - name: pg2\n    placement:\n      labels: {zone: a}\n";

    fn key(k: &str) -> Seg {
        Seg::Key(k.into())
    }

    #[test]
    fn finds_values_keys_and_items() {
        let at = |path: &[Seg]| locate(TEXT, path).map(|l| (l.line, l.column));
        assert_eq!(at(&[key("etcd"), key("members")]), Some((3, 12)));
        assert_eq!(at(&[key("members"), Seg::Index(0)]), Some((5, 5)));
        assert_eq!(
            at(&[key("members"), Seg::Index(1), key("name")]),
            Some((6, 11))
        );
        assert_eq!(
            at(&[
                key("members"),
                Seg::Index(1),
                key("placement"),
                key("labels"),
                key("zone")
            ]),
            Some((8, 22))
        );
    }

    #[test]
    fn a_missing_field_falls_back_to_its_parent() {
        let at = |path: &[Seg]| locate(TEXT, path).map(|l| l.line);
        assert_eq!(at(&[key("members"), Seg::Index(0), key("name")]), Some(5));
        assert_eq!(at(&[key("etcd"), key("resources")]), Some(3));
    }

    #[test]
    fn garbage_never_panics() {
        let _ = locate("{{{", &[key("x")]);
        let _ = locate(": : :\n\t- [", &[key("x")]);
        let _ = locate("", &[key("x")]);
        let _ = locate("a: [1, {b: *x}]", &[key("a"), Seg::Index(1), key("b")]);
    }
}
