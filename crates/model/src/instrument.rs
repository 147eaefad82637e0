//! Instruments: validated `VENUE:SYMBOL` names and their interning to small integer ids
//! used for routing. The registry owns the id space; ids are dense and never reused.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

/// Longest accepted instrument name, `VENUE:SYMBOL` included.
pub const MAX_INSTRUMENT_LEN: usize = 64;
const MAX_VENUE_LEN: usize = 16;

/// Dense id of an interned instrument, stable for the life of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstrumentId(pub u32);

impl InstrumentId {
    /// The id as an index into per-instrument tables.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Why an instrument name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstrumentError {
    /// Empty name.
    #[error("instrument name is empty; expected VENUE:SYMBOL, e.g. SIM:BTC-USD")]
    Empty,
    /// Longer than [`MAX_INSTRUMENT_LEN`].
    #[error("instrument name is {len} bytes long; the limit is {MAX_INSTRUMENT_LEN}")]
    TooLong {
        /// Length of the refused name in bytes.
        len: usize,
    },
    /// Not of the form `VENUE:SYMBOL` with the allowed characters.
    #[error(
        "invalid instrument name {name:?}: expected VENUE:SYMBOL where VENUE is 1-16 of A-Z 0-9 _ and SYMBOL is 1 or more of A-Z a-z 0-9 - _ . /"
    )]
    Malformed {
        /// The refused name.
        name: String,
    },
}

/// A validated instrument name, `VENUE:SYMBOL` (e.g. `BINANCE:BTCUSDT`, `SIM:BTC-USD`).
/// Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstrumentName(Arc<str>);

impl InstrumentName {
    /// Validates `name`.
    pub fn parse(name: &str) -> Result<InstrumentName, InstrumentError> {
        if name.is_empty() {
            return Err(InstrumentError::Empty);
        }
        if name.len() > MAX_INSTRUMENT_LEN {
            return Err(InstrumentError::TooLong { len: name.len() });
        }
        let malformed = || InstrumentError::Malformed {
            name: name.to_owned(),
        };
        let (venue, symbol) = name.split_once(':').ok_or_else(malformed)?;
        let venue_ok = !venue.is_empty()
            && venue.len() <= MAX_VENUE_LEN
            && venue
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        let symbol_ok = !symbol.is_empty()
            && symbol
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'));
        if venue_ok && symbol_ok {
            Ok(InstrumentName(Arc::from(name)))
        } else {
            Err(malformed())
        }
    }

    /// The full `VENUE:SYMBOL` text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The venue part.
    pub fn venue(&self) -> &str {
        self.0.split_once(':').map_or("", |(v, _)| v)
    }

    /// The symbol part.
    pub fn symbol(&self) -> &str {
        self.0.split_once(':').map_or("", |(_, s)| s)
    }
}

// Sound: `Hash` and `Eq` are derived from the `Arc<str>`, which hash and compare as the
// `str` itself, so maps keyed by name can be queried with a plain `&str`.
impl std::borrow::Borrow<str> for InstrumentName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for InstrumentName {
    type Error = InstrumentError;

    fn try_from(name: &str) -> Result<InstrumentName, InstrumentError> {
        InstrumentName::parse(name)
    }
}

impl fmt::Display for InstrumentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for InstrumentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

#[derive(Default)]
struct Interned {
    by_name: HashMap<InstrumentName, InstrumentId>,
    names: Vec<InstrumentName>,
}

/// Interns instrument names to dense ids. Shared between threads; lookups take a read
/// lock, which is fine because routing uses the id, not the name, once interned.
#[derive(Default, Clone)]
pub struct InstrumentRegistry {
    inner: Arc<RwLock<Interned>>,
}

impl InstrumentRegistry {
    /// An empty registry.
    pub fn new() -> InstrumentRegistry {
        InstrumentRegistry::default()
    }

    /// The id of `name`, interning it if new.
    pub fn intern(&self, name: &InstrumentName) -> InstrumentId {
        if let Some(id) = self.id(name) {
            return id;
        }
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if let Some(&id) = inner.by_name.get(name) {
            return id;
        }
        let id = InstrumentId(
            u32::try_from(inner.names.len()).expect("fewer than 2^32 instruments (invariant)"),
        );
        inner.names.push(name.clone());
        inner.by_name.insert(name.clone(), id);
        id
    }

    /// The id of `name`, if interned.
    pub fn id(&self, name: &InstrumentName) -> Option<InstrumentId> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        inner.by_name.get(name).copied()
    }

    /// The id of an already interned name given as text, without validating or
    /// allocating (a name that was never interned is simply not found).
    pub fn id_of(&self, name: &str) -> Option<InstrumentId> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        inner.by_name.get(name).copied()
    }

    /// The name behind `id`, if it exists.
    pub fn name(&self, id: InstrumentId) -> Option<InstrumentName> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        inner.names.get(id.index()).cloned()
    }

    /// All interned instruments in id order.
    pub fn all(&self) -> Vec<(InstrumentId, InstrumentName)> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        inner
            .names
            .iter()
            .enumerate()
            .map(|(i, n)| (InstrumentId(i as u32), n.clone()))
            .collect()
    }

    /// Number of interned instruments.
    pub fn len(&self) -> usize {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .names
            .len()
    }

    /// True when nothing is interned.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        for ok in [
            "SIM:BTC-USD",
            "BINANCE:BTCUSDT",
            "COINBASE:ETH/USD",
            "X_1:a.b_c-d",
        ] {
            let n = InstrumentName::parse(ok).unwrap();
            assert_eq!(n.as_str(), ok);
        }
        assert_eq!(InstrumentName::parse(""), Err(InstrumentError::Empty));
        let long = format!("SIM:{}", "A".repeat(61));
        assert_eq!(
            InstrumentName::parse(&long),
            Err(InstrumentError::TooLong { len: 65 })
        );
        for bad in [
            "BTCUSD",
            ":BTC",
            "SIM:",
            "sim:BTC",
            "SIM:BTC USD",
            "SIM:BTC:USD",
            "SIM:ä",
            "VENUENAMEWAYTOOLONG:X",
        ] {
            assert!(
                matches!(
                    InstrumentName::parse(bad),
                    Err(InstrumentError::Malformed { .. })
                ),
                "{bad}"
            );
        }
        let n = InstrumentName::parse("BINANCE:BTCUSDT").unwrap();
        assert_eq!((n.venue(), n.symbol()), ("BINANCE", "BTCUSDT"));
    }

    #[test]
    fn interning_is_dense_and_stable() {
        let reg = InstrumentRegistry::new();
        let a = InstrumentName::parse("SIM:A").unwrap();
        let b = InstrumentName::parse("SIM:B").unwrap();
        assert_eq!(reg.intern(&a), InstrumentId(0));
        assert_eq!(reg.intern(&b), InstrumentId(1));
        assert_eq!(reg.intern(&a), InstrumentId(0));
        assert_eq!(reg.name(InstrumentId(1)), Some(b.clone()));
        assert_eq!(reg.id(&b), Some(InstrumentId(1)));
        assert_eq!(reg.id_of("SIM:B"), Some(InstrumentId(1)));
        assert_eq!(reg.id_of("SIM:C"), None);
        assert_eq!(reg.name(InstrumentId(2)), None);
        assert_eq!(reg.all(), vec![(InstrumentId(0), a), (InstrumentId(1), b)]);
    }
}
