//! File descriptors, which bound how many connections a server can hold: the open-file
//! limit is raised to its hard limit at start, and the default `max_connections` is
//! what it leaves after the descriptors everything else needs, so that past it new
//! connections are refused cleanly rather than the store or a feed failing to open one.

use rustix::process::{Resource, getrlimit, setrlimit};

/// Descriptors kept for everything but gRPC connections: the store's files (database,
/// WAL, spill), feed sockets, the HTTP listener and its clients, logs.
pub const RESERVED_DESCRIPTORS: u64 = 1024;

/// Raises this process's open-file limit to its hard limit, as Go's runtime does: a
/// server of thousands of connections needs them, and the usual soft default (1,024) is
/// a relic of select(2). Returns the limit in force after, `None` when unlimited.
pub fn raise_descriptor_limit() -> Option<u64> {
    let mut limit = getrlimit(Resource::Nofile);
    // `None` is unlimited.
    let below_hard = match (limit.current, limit.maximum) {
        (Some(soft), Some(hard)) => soft < hard,
        (Some(_), None) => true,
        (None, _) => false,
    };
    if below_hard {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(error = %e, "cannot raise the open-file limit to its hard limit");
        }
    }
    getrlimit(Resource::Nofile).current
}

/// The default `max_connections`: the open-file limit less [`RESERVED_DESCRIPTORS`], or
/// half of it when that is more (a small limit still serves some clients).
pub fn default_max_connections() -> usize {
    match getrlimit(Resource::Nofile).current {
        Some(soft) => soft.saturating_sub(RESERVED_DESCRIPTORS).max(soft / 2) as usize,
        // Unlimited descriptors: memory is the bound, and the operator's to set.
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_raised_to_the_hard_one_and_connections_get_all_but_the_reserve() {
        let hard = getrlimit(Resource::Nofile).maximum;
        assert_eq!(raise_descriptor_limit(), hard);
        assert_eq!(getrlimit(Resource::Nofile).current, hard);
        let expected = match hard {
            Some(hard) => hard.saturating_sub(RESERVED_DESCRIPTORS).max(hard / 2) as usize,
            None => 0,
        };
        assert_eq!(default_max_connections(), expected);
        // A small limit still leaves half to connections.
        if let Some(hard) = hard.filter(|&h| h > 1500) {
            let mut limit = getrlimit(Resource::Nofile);
            limit.current = Some(1500);
            setrlimit(Resource::Nofile, limit).unwrap();
            assert_eq!(default_max_connections(), 750);
            limit.current = Some(hard);
            setrlimit(Resource::Nofile, limit).unwrap();
        }
    }
}
