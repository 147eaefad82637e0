//! API keys: who may call what. The keys file (`[auth] keys_file`, TOML) lists each key
//! by id with the SHA-256 of its secret (the secret itself is never stored), its roles
//! (`subscribe`: Market; `history`: History; `ingest`: Ingest; `admin`: all of them),
//! the instruments it may touch (`VENUE:SYMBOL`, `VENUE:*`, a trailing `*` prefix, or
//! `*`) and its limits. Clients send `authorization: Bearer <secret>`.
//!
//! [`Authenticate`] is the tower layer in front of every service: health and reflection
//! stay open; anything else without a known key is `UNAUTHENTICATED`, and a key without
//! the method's role `PERMISSION_DENIED`. It hands the [`Key`] to the services in the
//! request's extensions (they check instruments and per-key limits) and holds each
//! response body: when a reload (SIGHUP) drops a key, its streams end at once with
//! `UNAUTHENTICATED`, and no other stream notices. A reload that fails keeps the keys
//! in force and says which file and line is wrong.

mod layer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tonic::Status;

pub use self::layer::{Authenticate, Authenticated, KeyedBody};
use crate::shutdown::{self, Shutdown, Trigger};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `raven.v1.Market`: streams, snapshots, the instrument list.
    Subscribe,
    /// `raven.v1.History`: queries, books at a time, replays.
    History,
    /// `raven.v1.Ingest`: publishing events.
    Ingest,
    /// Every role.
    Admin,
}

impl Role {
    const ALL: [(Role, &'static str); 4] = [
        (Role::Subscribe, "subscribe"),
        (Role::History, "history"),
        (Role::Ingest, "ingest"),
        (Role::Admin, "admin"),
    ];

    fn bit(self) -> u8 {
        1 << self as u8
    }

    /// The role's name in the keys file.
    pub fn name(self) -> &'static str {
        Role::ALL[self as usize].1
    }

    /// The role named `name`.
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.iter().find(|(_, n)| *n == name).map(|(r, _)| *r)
    }

    /// The role a request path needs; `None` for the open services (health, reflection).
    fn of_path(path: &str) -> Option<Role> {
        let service = path.strip_prefix('/')?.split('/').next()?;
        match service {
            "raven.v1.Market" => Some(Role::Subscribe),
            "raven.v1.History" => Some(Role::History),
            "raven.v1.Ingest" => Some(Role::Ingest),
            _ => None,
        }
    }
}

/// Per-key limits; 0 is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeyLimits {
    /// Streaming calls open at once.
    pub max_streams: usize,
    /// Subscriptions over all of the key's streams.
    pub max_subscriptions: usize,
    /// Events per second the key may publish; past it the publisher is slowed.
    pub ingest_events_per_s: u64,
}

/// An instrument pattern: exact, a prefix ending in `*`, or `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Pattern {
    fn parse(text: &str) -> Result<Pattern, String> {
        match text.find('*') {
            None => Ok(Pattern::Exact(text.to_owned())),
            Some(at) if at == text.len() - 1 => Ok(Pattern::Prefix(text[..at].to_owned())),
            Some(_) => Err(format!(
                "instrument pattern {text:?}: `*` may only end a pattern (VENUE:*, VENUE:BTC*, *)"
            )),
        }
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            Pattern::Exact(exact) => exact == name,
            Pattern::Prefix(prefix) => name.starts_with(prefix.as_str()),
        }
    }
}

/// What a key has in use, kept across reloads for as long as its secret is valid.
#[derive(Debug)]
pub struct Usage {
    streams: AtomicUsize,
    subscriptions: AtomicUsize,
    /// Ingest allowance, in events, as of an instant; negative is owed (the publisher
    /// waits it out). `None` until first used: a new key starts with a full second's.
    bucket: Mutex<Option<(i64, Instant)>>,
    revoke: Trigger,
    revoked: Shutdown,
}

impl Usage {
    fn new() -> Usage {
        let (revoke, revoked) = shutdown::channel();
        Usage {
            streams: AtomicUsize::new(0),
            subscriptions: AtomicUsize::new(0),
            bucket: Mutex::new(None),
            revoke,
            revoked,
        }
    }
}

/// One API key, as the services see it.
#[derive(Debug)]
pub struct Key {
    /// Its id in the keys file (logs and errors name it; the secret is never shown).
    pub id: String,
    roles: u8,
    /// Empty: every instrument.
    instruments: Vec<Pattern>,
    /// Its limits.
    pub limits: KeyLimits,
    usage: Arc<Usage>,
    stats: Arc<AuthStats>,
}

impl Key {
    /// Whether the key has `role` (admin has every role).
    pub fn has(&self, role: Role) -> bool {
        self.roles & (role.bit() | Role::Admin.bit()) != 0
    }

    /// Whether the key may touch the instrument named `name`.
    pub fn may(&self, name: &str) -> bool {
        self.instruments.is_empty() || self.instruments.iter().any(|p| p.matches(name))
    }

    /// `PERMISSION_DENIED` naming the instrument, unless the key may touch it.
    pub fn check(&self, name: &str) -> Result<(), Status> {
        if self.may(name) {
            Ok(())
        } else {
            self.stats.permission_denied.fetch_add(1, Ordering::Relaxed);
            Err(Status::permission_denied(format!(
                "API key {:?} may not use instrument {name}",
                self.id
            )))
        }
    }

    /// Takes `n` more subscriptions from the key's allowance, or `RESOURCE_EXHAUSTED`
    /// naming the limit. Give them back with [`Key::unsubscribed`].
    pub fn subscribe(&self, n: usize) -> Result<(), Status> {
        let max = self.limits.max_subscriptions;
        let held = self.usage.subscriptions.fetch_add(n, Ordering::AcqRel);
        if max != 0 && held + n > max {
            self.usage.subscriptions.fetch_sub(n, Ordering::AcqRel);
            self.stats
                .subscriptions_limited
                .fetch_add(1, Ordering::Relaxed);
            return Err(Status::resource_exhausted(format!(
                "API key {:?} holds {held} subscriptions and asked for {n} more: limit max_subscriptions = {max}",
                self.id
            )));
        }
        Ok(())
    }

    /// Returns `n` subscriptions to the key's allowance.
    pub fn unsubscribed(&self, n: usize) {
        self.usage.subscriptions.fetch_sub(n, Ordering::AcqRel);
    }

    /// How long a publisher of `events` more, at `now`, must wait to keep within
    /// `ingest_events_per_s` (a second's worth may go at once).
    pub fn ingest_delay(&self, events: u64, now: Instant) -> Duration {
        let rate = self.limits.ingest_events_per_s;
        if rate == 0 {
            return Duration::ZERO;
        }
        let mut bucket = self.usage.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, at) = bucket.get_or_insert((rate as i64, now));
        let refill = (now.saturating_duration_since(*at).as_nanos() * u128::from(rate)
            / 1_000_000_000)
            .min(i64::MAX as u128 / 4) as i64;
        // Debt is paid off by the refill first; what is left fills up to one second's.
        *tokens = tokens.saturating_add(refill).min(rate as i64) - events as i64;
        *at = now;
        if *tokens >= 0 {
            Duration::ZERO
        } else {
            self.stats.ingest_slowed.fetch_add(1, Ordering::Relaxed);
            Duration::from_nanos((-*tokens) as u64 * 1_000_000_000 / rate)
        }
    }

    /// Resolves when the key is revoked.
    pub fn revoked(&self) -> Shutdown {
        self.usage.revoked.clone()
    }
}

/// A keys file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("keys file {path}{}: {reason}", line.map(|l| format!(", line {l}")).unwrap_or_default())]
pub struct KeysError {
    /// The file.
    pub path: String,
    /// Where in it, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub reason: String,
}

/// The keys file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    keys: Vec<toml::Spanned<KeyEntry>>,
}

/// One `[[keys]]` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    id: String,
    sha256: String,
    roles: Vec<String>,
    instruments: Option<Vec<String>>,
    max_streams: Option<usize>,
    max_subscriptions: Option<usize>,
    ingest_events_per_s: Option<u64>,
}

/// The SHA-256 of a secret.
type Digest = [u8; 32];

fn digest(secret: &str) -> Digest {
    let hash = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    hash.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex(text: &str) -> Option<Digest> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Failed authentications, by outcome.
#[derive(Debug, Default)]
pub struct AuthStats {
    /// No key, or one the server does not know (`UNAUTHENTICATED`).
    pub unauthenticated: AtomicU64,
    /// A role or instrument the key lacks (`PERMISSION_DENIED`).
    pub permission_denied: AtomicU64,
    /// Streams refused for the key's `max_streams` (`RESOURCE_EXHAUSTED`).
    pub streams_limited: AtomicU64,
    /// Subscribes refused for the key's `max_subscriptions` (`RESOURCE_EXHAUSTED`).
    pub subscriptions_limited: AtomicU64,
    /// Publish requests held back to the key's `ingest_events_per_s`.
    pub ingest_slowed: AtomicU64,
    /// Keys revoked by a reload while in use or not.
    pub revoked: AtomicU64,
}

/// The keys in force, reloadable.
#[derive(Debug)]
pub struct Keys {
    path: PathBuf,
    /// The limits a key does not set; a reload of `[limits]` may change them.
    defaults: Mutex<KeyLimits>,
    by_digest: RwLock<Arc<HashMap<Digest, Arc<Key>>>>,
    /// Counts of refusals.
    pub stats: Arc<AuthStats>,
}

/// A stream counted against its key's `max_streams` while it lives.
pub struct StreamSlot(Arc<Key>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.usage.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Keys {
    /// Counts a stream of `key`'s (a streaming call, a WebSocket) against its
    /// `max_streams` for as long as the slot lives, or refuses it (counted).
    pub fn open_stream(&self, key: &Arc<Key>) -> Result<StreamSlot, Status> {
        let held = key.usage.streams.fetch_add(1, Ordering::AcqRel);
        let slot = StreamSlot(key.clone());
        let max = key.limits.max_streams;
        if max != 0 && held >= max {
            self.stats.streams_limited.fetch_add(1, Ordering::Relaxed);
            return Err(Status::resource_exhausted(format!(
                "API key {:?} has {held} streams open: limit max_streams = {max}",
                key.id
            )));
        }
        Ok(slot)
    }

    /// Loads `path`, with `defaults` for the limits a key does not set.
    pub fn load(path: &Path, defaults: KeyLimits) -> Result<Keys, KeysError> {
        let keys = Keys {
            path: path.to_owned(),
            defaults: Mutex::new(defaults),
            by_digest: RwLock::default(),
            stats: Arc::default(),
        };
        let loaded = keys.read(&HashMap::new())?;
        *keys.by_digest.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
        Ok(keys)
    }

    /// The file the keys are read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets the limits a key does not set itself, for the next [`Keys::reload`].
    pub fn set_defaults(&self, defaults: KeyLimits) {
        *self.defaults.lock().unwrap_or_else(|p| p.into_inner()) = defaults;
    }

    /// How many keys are in force.
    pub fn len(&self) -> usize {
        self.current().len()
    }

    /// Whether no key is in force (every call but health and reflection is refused).
    pub fn is_empty(&self) -> bool {
        self.current().is_empty()
    }

    fn current(&self) -> Arc<HashMap<Digest, Arc<Key>>> {
        self.by_digest
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads the file again. Keys whose secret is gone are revoked: their streams end
    /// with `UNAUTHENTICATED`. On error nothing changes. Returns (keys, revoked).
    pub fn reload(&self) -> Result<(usize, usize), KeysError> {
        let old = self.current();
        let new = self.read(&old)?;
        let mut revoked = 0;
        for (digest, key) in old.iter() {
            if !new.contains_key(digest) {
                key.usage.revoke.fire();
                revoked += 1;
            }
        }
        self.stats
            .revoked
            .fetch_add(revoked as u64, Ordering::Relaxed);
        let count = new.len();
        *self.by_digest.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
        Ok((count, revoked))
    }

    /// Parses the file; keys already in `old` keep what they have in use.
    fn read(
        &self,
        old: &HashMap<Digest, Arc<Key>>,
    ) -> Result<HashMap<Digest, Arc<Key>>, KeysError> {
        let path = self.path.display().to_string();
        let text = std::fs::read_to_string(&self.path).map_err(|e| KeysError {
            path: path.clone(),
            line: None,
            reason: e.to_string(),
        })?;
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let file: KeysFile = toml::from_str(&text).map_err(|e| KeysError {
            path: path.clone(),
            line: e.span().map(|s| line_of(s.start)),
            reason: e.message().to_owned(),
        })?;
        let defaults = *self.defaults.lock().unwrap_or_else(|p| p.into_inner());
        let mut keys = HashMap::new();
        let mut ids = HashMap::new();
        for spanned in file.keys {
            let line = line_of(spanned.span().start);
            let entry = spanned.into_inner();
            let error = |reason: String| KeysError {
                path: path.clone(),
                line: Some(line),
                reason,
            };
            if entry.id.is_empty() {
                return Err(error("a key needs an id".into()));
            }
            if let Some(first) = ids.insert(entry.id.clone(), line) {
                return Err(error(format!(
                    "key id {:?} is already used on line {first}",
                    entry.id
                )));
            }
            let digest = parse_hex(&entry.sha256).ok_or_else(|| {
                error(format!(
                    "key {:?}: sha256 must be 64 hex digits (the SHA-256 of the secret; `raven keys add` writes it)",
                    entry.id
                ))
            })?;
            let mut roles = 0;
            for name in &entry.roles {
                let role = Role::parse(name).ok_or_else(|| {
                    error(format!(
                        "key {:?}: unknown role {name:?} (subscribe, history, ingest, admin)",
                        entry.id
                    ))
                })?;
                roles |= role.bit();
            }
            let instruments = match &entry.instruments {
                None => Vec::new(),
                Some(patterns) if patterns.iter().any(|p| p == "*") => Vec::new(),
                Some(patterns) => patterns
                    .iter()
                    .map(|p| Pattern::parse(p))
                    .collect::<Result<_, _>>()
                    .map_err(|reason| error(format!("key {:?}: {reason}", entry.id)))?,
            };
            if entry.instruments.as_ref().is_some_and(Vec::is_empty) {
                return Err(error(format!(
                    "key {:?}: instruments is empty (leave it out, or use [\"*\"], for all)",
                    entry.id
                )));
            }
            let limits = KeyLimits {
                max_streams: entry.max_streams.unwrap_or(defaults.max_streams),
                max_subscriptions: entry
                    .max_subscriptions
                    .unwrap_or(defaults.max_subscriptions),
                ingest_events_per_s: entry
                    .ingest_events_per_s
                    .unwrap_or(defaults.ingest_events_per_s),
            };
            let usage = old
                .get(&digest)
                .map_or_else(|| Arc::new(Usage::new()), |k| k.usage.clone());
            if keys
                .insert(
                    digest,
                    Arc::new(Key {
                        id: entry.id,
                        roles,
                        instruments,
                        limits,
                        usage,
                        stats: self.stats.clone(),
                    }),
                )
                .is_some()
            {
                return Err(error("two keys have the same secret".into()));
            }
        }
        Ok(keys)
    }

    /// The key a request's `authorization` header names if it has `role`, or the refusal
    /// (counted): for the gRPC layer and the HTTP API alike.
    pub fn authorize(
        &self,
        header: Option<&http::HeaderValue>,
        role: Role,
    ) -> Result<Arc<Key>, Status> {
        let key = self.authenticate(header).inspect_err(|_| {
            self.stats.unauthenticated.fetch_add(1, Ordering::Relaxed);
        })?;
        if !key.has(role) {
            self.stats.permission_denied.fetch_add(1, Ordering::Relaxed);
            return Err(Status::permission_denied(format!(
                "API key {:?} lacks the {} role",
                key.id,
                role.name()
            )));
        }
        Ok(key)
    }

    /// The key a request's `authorization` header names, or why not.
    fn authenticate(&self, header: Option<&http::HeaderValue>) -> Result<Arc<Key>, Status> {
        let Some(header) = header else {
            return Err(Status::unauthenticated(
                "an API key is required: send the header `authorization: Bearer <key>` (raven --key, RAVEN_KEY)",
            ));
        };
        let secret = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("the authorization header must be `Bearer <key>`")
            })?;
        self.current()
            .get(&digest(secret.trim()))
            .cloned()
            .ok_or_else(|| Status::unauthenticated("unknown or revoked API key"))
    }
}

/// A new secret: 32 random bytes, hex, with a prefix that says what it is.
pub fn new_secret() -> Result<String, KeysError> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).map_err(|_| {
        KeysError {
            path: String::new(),
            line: None,
            reason: "the system's random source failed".into(),
        }
    })?;
    Ok(format!("rvn_{}", hex(&bytes)))
}

/// The `[[keys]]` table for a key with this secret, as `raven keys add` appends it.
pub fn key_entry(id: &str, secret: &str, roles: &[Role], instruments: &[String]) -> String {
    let quoted = |items: Vec<String>| {
        items
            .iter()
            .map(|i| format!("{i:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut entry = format!(
        "\n[[keys]]\nid = {id:?}\nsha256 = \"{}\"\nroles = [{}]\n",
        hex(&digest(secret)),
        quoted(roles.iter().map(|r| r.name().to_owned()).collect())
    );
    if !instruments.is_empty() {
        entry.push_str(&format!(
            "instruments = [{}]\n",
            quoted(instruments.to_vec())
        ));
    }
    entry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_exact_names_prefixes_and_everything() {
        let p = |t| Pattern::parse(t).unwrap();
        assert!(p("SIM:BTC-USD").matches("SIM:BTC-USD"));
        assert!(!p("SIM:BTC-USD").matches("SIM:BTC-USDT"));
        assert!(p("BINANCE:*").matches("BINANCE:ETHUSDT"));
        assert!(!p("BINANCE:*").matches("BINANCE_FUT:ETHUSDT"));
        assert!(p("SIM:BTC*").matches("SIM:BTC-EUR"));
        assert!(Pattern::parse("SIM:*-USD").is_err());
    }

    #[test]
    fn a_secret_hashes_to_the_entry_written_for_it() {
        let secret = new_secret().unwrap();
        assert_eq!(secret.len(), 4 + 64);
        assert_ne!(secret, new_secret().unwrap());
        let entry = key_entry("ops", &secret, &[Role::Admin], &[]);
        assert!(entry.contains(&format!("sha256 = \"{}\"", hex(&digest(&secret)))));
        assert_eq!(parse_hex(&hex(&digest(&secret))), Some(digest(&secret)));
        // SHA-256 of "abc", the standard's test vector.
        assert_eq!(
            hex(&digest("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn ingest_allowance_refills_at_the_rate_and_owes_past_it() {
        let key = Key {
            id: "k".into(),
            roles: Role::Ingest.bit(),
            instruments: Vec::new(),
            limits: KeyLimits {
                ingest_events_per_s: 1000,
                ..KeyLimits::default()
            },
            usage: Arc::new(Usage::new()),
            stats: Arc::default(),
        };
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        // A second's worth at once, then 500 more owe half a second.
        assert_eq!(key.ingest_delay(1000, at(0)), Duration::ZERO);
        assert_eq!(key.ingest_delay(500, at(0)), Duration::from_millis(500));
        // 250 ms later 250 have refilled: the debt is 250, and 100 more make it 350.
        assert_eq!(key.ingest_delay(100, at(250)), Duration::from_millis(350));
        // After a long pause the allowance is back to one second's worth, no more.
        assert_eq!(key.ingest_delay(1000, at(10_000)), Duration::ZERO);
        assert_eq!(key.ingest_delay(1, at(10_000)), Duration::from_millis(1));
    }
}
