//! The JSON layer every venue shares: wire structs whose fields borrow from the frame and
//! whose unknown keys are skipped *and counted* (venues add fields over time; a rising
//! count is how an operator learns the wire changed), and exact decimal fields that parse
//! straight into [`Price`]/[`Qty`] while the frame is read.
//!
//! serde's derive ignores unknown fields silently, so [`wire_struct!`] writes the
//! `Deserialize` impl instead: one pass over the object, borrowed keys, no intermediate
//! `Value`. Strings with JSON escapes cannot be borrowed; no decimal, symbol or type name
//! a venue sends has one, so such a field is a decode error rather than a copy.

use std::borrow::Cow;
use std::fmt;

use raven_model::{Price, Qty};
use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};

/// An object key, borrowed from the frame unless it contained escapes.
pub(crate) struct Key<'de>(pub Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// Declares a wire struct borrowing from the frame, with a `Deserialize` that fills the
/// listed keys, refuses duplicated keys, and counts every other key in `unknown`.
///
/// A field written `"k" => name: T` is required; `"k" => name: T = default` is optional.
macro_rules! wire_struct {
    (
        $(#[$meta:meta])*
        pub struct $name:ident<'a> {
            $( $(#[$fmeta:meta])* $key:literal => $field:ident : $ty:ty $(= $default:expr)? ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name<'a> {
            $( $(#[$fmeta])* pub $field: $ty, )*
            /// Keys this decoder does not know, skipped.
            pub unknown: u32,
        }

        impl<'de: 'a, 'a> serde::Deserialize<'de> for $name<'a> {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V<'a>(std::marker::PhantomData<&'a ()>);
                impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
                    type Value = $name<'a>;
                    wire_struct!(@visit $name, $( $key => $field : $ty $(= $default)? ),*);
                }
                d.deserialize_map(V(std::marker::PhantomData))
            }
        }
    };
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$fmeta:meta])* $key:literal => $field:ident : $ty:ty $(= $default:expr)? ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
            /// Keys this decoder does not know, skipped.
            pub unknown: u32,
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = $name;
                    wire_struct!(@visit $name, $( $key => $field : $ty $(= $default)? ),*);
                }
                d.deserialize_map(V)
            }
        }
    };
    (@visit $name:ident, $( $key:literal => $field:ident : $ty:ty $(= $default:expr)? ),*) => {
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(concat!("a ", stringify!($name), " object"))
        }
        fn visit_map<M: serde::de::MapAccess<'de>>(
            self,
            mut map: M,
        ) -> Result<Self::Value, M::Error> {
            $( let mut $field: Option<$ty> = None; )*
            let mut unknown = 0u32;
            while let Some(key) = map.next_key::<$crate::json::Key<'de>>()? {
                match key.0.as_ref() {
                    $( $key => {
                        if $field.is_some() {
                            return Err(serde::de::Error::duplicate_field($key));
                        }
                        $field = Some(map.next_value()?);
                    } )*
                    _ => {
                        map.next_value::<serde::de::IgnoredAny>()?;
                        unknown += 1;
                    }
                }
            }
            Ok($name {
                $( $field: wire_struct!(@take $field, $key $(, $default)?), )*
                unknown,
            })
        }
    };
    (@take $field:ident, $key:literal) => {
        $field.ok_or_else(|| serde::de::Error::missing_field($key))?
    };
    (@take $field:ident, $key:literal, $default:expr) => {
        $field.unwrap_or_else(|| $default)
    };
}

pub(crate) use wire_struct;

/// Decodes a value that was kept raw because the key saying what it is came after it
/// (venues send that key first; this is the fallback for those that do not).
pub(crate) fn seed_raw<'de, S, E>(
    seed: S,
    raw: &'de serde_json::value::RawValue,
) -> Result<S::Value, E>
where
    S: de::DeserializeSeed<'de>,
    E: de::Error,
{
    let mut inner = serde_json::Deserializer::from_str(raw.get());
    seed.deserialize(&mut inner).map_err(E::custom)
}

/// A decimal string field parsed exactly into a price.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecPrice(pub Price);

/// A decimal string field parsed exactly into a quantity that may not be negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecQty(pub Qty);

pub(crate) fn parse_price<E: de::Error>(text: &str) -> Result<Price, E> {
    text.parse::<Price>().map_err(E::custom)
}

pub(crate) fn parse_qty<E: de::Error>(text: &str) -> Result<Qty, E> {
    let qty = text.parse::<Qty>().map_err(E::custom)?;
    if qty.is_negative() {
        return Err(E::custom(format_args!("negative quantity {text:?}")));
    }
    Ok(qty)
}

/// Visits a JSON string, borrowed or not, and hands it to `parse`.
struct StrWith<F>(F, &'static str);

impl<'de, T, F: FnOnce(&str) -> Result<T, String>> Visitor<'de> for StrWith<F> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.1)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.0)(v).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for DecPrice {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrWith(
            |s: &str| parse_price::<de::value::Error>(s).map_err(|e| e.to_string()),
            "a decimal price string",
        ))
        .map(DecPrice)
    }
}

impl<'de> Deserialize<'de> for DecQty {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrWith(
            |s: &str| parse_qty::<de::value::Error>(s).map_err(|e| e.to_string()),
            "a decimal quantity string",
        ))
        .map(DecQty)
    }
}

/// Binance's level list, `[["price","qty"], ...]`, parsed exactly while it is read: one
/// allocation, no intermediate strings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PairLevels(pub Vec<(Price, Qty)>);

impl<'de> Deserialize<'de> for PairLevels {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Levels;
        impl<'de> Visitor<'de> for Levels {
            type Value = PairLevels;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of [price, quantity] string pairs")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PairLevels, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(8).min(1024));
                while let Some(Pair(p, q)) = seq.next_element::<Pair>()? {
                    out.push((p, q));
                }
                Ok(PairLevels(out))
            }
        }
        d.deserialize_seq(Levels)
    }
}

/// One `["price","qty"]`; a third element (some venues add an order count) is refused
/// rather than silently dropped, since it would mean the shape changed.
struct Pair(Price, Qty);

impl<'de> Deserialize<'de> for Pair {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PairVisitor;
        impl<'de> Visitor<'de> for PairVisitor {
            type Value = Pair;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a [price, quantity] pair of decimal strings")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Pair, A::Error> {
                let DecPrice(p) = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let DecQty(q) = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                if seq.next_element::<de::IgnoredAny>()?.is_some() {
                    return Err(de::Error::invalid_length(3, &self));
                }
                Ok(Pair(p, q))
            }
        }
        d.deserialize_seq(PairVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    wire_struct! {
        /// A test shape.
        pub struct Probe<'a> {
            "s" => symbol: &'a str,
            "n" => n: u64 = 0,
        }
    }

    #[test]
    fn unknown_keys_are_skipped_and_counted() {
        let p: Probe<'_> =
            serde_json::from_str(r#"{"s":"BTC","x":[1,{"y":2}],"n":7,"z":null}"#).unwrap();
        assert_eq!((p.symbol, p.n, p.unknown), ("BTC", 7, 2));
    }

    #[test]
    fn optional_fields_default_and_required_ones_are_named() {
        let p: Probe<'_> = serde_json::from_str(r#"{"s":"ETH"}"#).unwrap();
        assert_eq!((p.symbol, p.n, p.unknown), ("ETH", 0, 0));
        let e = serde_json::from_str::<Probe<'_>>(r#"{"n":1}"#).unwrap_err();
        assert!(e.to_string().contains("missing field `s`"), "{e}");
    }

    #[test]
    fn duplicated_keys_are_refused() {
        let e = serde_json::from_str::<Probe<'_>>(r#"{"s":"A","s":"B"}"#).unwrap_err();
        assert!(e.to_string().contains("duplicate field `s`"), "{e}");
    }

    #[test]
    fn levels_parse_exactly_and_refuse_non_decimals() {
        let l: PairLevels =
            serde_json::from_str(r#"[["1209.67000000","85.48210000"],["0.0024","10"]]"#).unwrap();
        assert_eq!(
            l.0,
            vec![
                ("1209.67".parse().unwrap(), "85.4821".parse().unwrap()),
                ("0.0024".parse().unwrap(), "10".parse().unwrap()),
            ]
        );
        for bad in [
            r#"[["0.-10000","1"]]"#,
            r#"[["1","0.-10000"]]"#,
            r#"[["NaN","1"]]"#,
            r#"[["1e-5","1"]]"#,
            r#"[["1","-2"]]"#,
            r#"[[1.5,"1"]]"#,
            r#"[["1"]]"#,
            r#"[["1","2","3"]]"#,
        ] {
            assert!(
                serde_json::from_str::<PairLevels>(bad).is_err(),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn a_negative_quantity_names_itself() {
        let e = serde_json::from_str::<PairLevels>(r#"[["1","-2"]]"#).unwrap_err();
        assert!(e.to_string().contains("negative quantity \"-2\""), "{e}");
    }
}
