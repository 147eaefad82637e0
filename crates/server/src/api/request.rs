//! Request validation, for every service: what a client sent, checked and turned into
//! the server's types, or refused with a precise status (`INVALID_ARGUMENT` for what is
//! malformed, `RESOURCE_EXHAUSTED` for what is too much) before anything else happens.

use raven_model::{Channel, InstrumentError, InstrumentName};
use raven_proto::convert::{ProtoError, channel_from_pb, channel_to_pb};
use raven_proto::limits::{
    MAX_DEPTH, MAX_HISTORY_INSTRUMENTS, MAX_HISTORY_LIMIT, MAX_REPLAY_SPEED,
};
use raven_proto::pb;
use tonic::Status;

use crate::store::Query;

/// An instrument name, `VENUE:SYMBOL`.
pub(super) fn name(name: &str) -> Result<InstrumentName, Status> {
    InstrumentName::parse(name).map_err(|e| match e {
        InstrumentError::Empty => Status::invalid_argument(
            "instrument name is empty; expected VENUE:SYMBOL, e.g. SIM:BTC-USD",
        ),
        other => Status::invalid_argument(other.to_string()),
    })
}

/// A channel number.
pub(super) fn channel(value: i32) -> Result<Channel, Status> {
    channel_from_pb(value).map_err(|e| match e {
        ProtoError::UnknownEnum { value: 0, .. } => Status::invalid_argument(
            "channel is required: CHANNEL_BOOK, CHANNEL_BBO, CHANNEL_TRADES or CHANNEL_CANDLES",
        ),
        _ => Status::invalid_argument(format!(
            "unknown channel {value}; expected CHANNEL_BOOK (1), CHANNEL_BBO (2), CHANNEL_TRADES (3) or CHANNEL_CANDLES (4)"
        )),
    })
}

/// A book depth (0: the full book).
pub(super) fn depth(depth: u32) -> Result<u32, Status> {
    if depth > MAX_DEPTH {
        return Err(Status::invalid_argument(format!(
            "depth {depth} is too large; use 1..={MAX_DEPTH}, or 0 for the full book"
        )));
    }
    Ok(depth)
}

/// An instant that must not be in the future of `now` (what happens then is not known
/// yet; answering with the present, labelled with that instant, would be a guess).
pub(super) fn not_future(field: &str, at: u64, now: u64) -> Result<u64, Status> {
    if at > now {
        return Err(Status::invalid_argument(format!(
            "{field} ({at}) is in the future (server time {now})"
        )));
    }
    Ok(at)
}

/// A replay speed: 0 (as fast as possible) up to the limit.
pub(super) fn replay_speed(speed: f64) -> Result<f64, Status> {
    if !(0.0..=MAX_REPLAY_SPEED).contains(&speed) {
        return Err(Status::invalid_argument(format!(
            "speed {speed} is out of range; use 0 (as fast as possible) or up to {MAX_REPLAY_SPEED}"
        )));
    }
    Ok(speed)
}

/// A history query.
pub(super) fn history(request: &pb::HistoryRequest) -> Result<Query, Status> {
    if request.instruments.is_empty() {
        return Err(Status::invalid_argument("the query names no instruments"));
    }
    if request.instruments.len() > MAX_HISTORY_INSTRUMENTS {
        return Err(Status::resource_exhausted(format!(
            "the query names {} instruments; at most {MAX_HISTORY_INSTRUMENTS} are allowed",
            request.instruments.len()
        )));
    }
    for n in &request.instruments {
        name(n)?;
    }
    let channels = request
        .channels
        .iter()
        .map(|&c| channel(c).map(|c| channel_to_pb(c) as u8))
        .collect::<Result<Vec<_>, _>>()?;
    // 0 (unset) means no end.
    let to = if request.to == 0 {
        u64::MAX
    } else {
        request.to
    };
    if request.from > to {
        return Err(Status::invalid_argument(format!(
            "from ({}) is after to ({})",
            request.from, request.to
        )));
    }
    if request.limit > MAX_HISTORY_LIMIT {
        return Err(Status::invalid_argument(format!(
            "limit {} is too large; use 1..={MAX_HISTORY_LIMIT}, or 0 for no limit",
            request.limit
        )));
    }
    Ok(Query {
        instruments: request.instruments.clone(),
        channels,
        from: request.from,
        to,
        limit: request.limit,
        after: None,
    })
}
