//! What a venue's codec does for a connection ([`Session`]), and the helpers the codecs
//! share to turn frames into tagged actions: the connection in [`super::connection`]
//! drives a session without knowing its venue.

use raven_model::{Channel, StatusKind, UnixNanos};
use raven_venues::Action;

/// What a venue's codec does for a connection. It owns its instruments' sync state, so
/// each book has one writer.
pub trait Session: Send {
    /// The frames to send after connecting, in order; the connection paces them.
    fn subscriptions(&mut self) -> Vec<String>;
    /// A text frame, received at `now`; the actions go to `out` by instrument slot.
    fn on_text(&mut self, text: &str, now: UnixNanos, out: &mut Vec<(usize, Action)>) -> Signal;
    /// A REST snapshot for `slot` arrived. Venues that send snapshots in-band get none.
    fn on_snapshot(&mut self, _slot: usize, _body: &[u8], _out: &mut Vec<(usize, Action)>) {}
    /// The engine refused `slot`'s book: rebuild it.
    fn resync(&mut self, slot: usize, detail: String, out: &mut Vec<(usize, Action)>);
    /// The REST request a `FetchSnapshot` for `slot` means: URL and weight; none for
    /// venues that send snapshots in-band.
    fn snapshot_request(&self, _slot: usize) -> Option<(String, u32)> {
        None
    }
    /// The frames that rebuild these slots' books by subscribing again (venues that send
    /// the snapshot in-band); empty for venues with REST snapshots.
    fn resubscribe(&mut self, slots: &[usize]) -> Vec<String>;
    /// Whether a rotation may read the old and the new connection together (the codec
    /// drops what both deliver by venue id). Venues that number messages per connection
    /// cannot: their rotation replaces the connection and rebuilds its books instead.
    fn overlapping_rotation(&self) -> bool {
        true
    }
    /// The connection is gone; nothing received so far continues.
    fn disconnected(&mut self);
    /// What the session has ignored so far, for the feed's metrics.
    fn ignored(&self) -> Ignored;
}

/// What a session ignored, counted since it started: keys its decoders do not know
/// (a rising count means the venue changed its messages) and messages it does not
/// handle (unknown types, or about symbols it did not subscribe).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Ignored {
    /// Unknown keys skipped.
    pub unknown_fields: u64,
    /// Messages skipped.
    pub unhandled: u64,
}

/// Tags a slot's actions for [`Session::on_text`]'s output.
pub fn tag(slot: usize, actions: &mut Vec<Action>, out: &mut Vec<(usize, Action)>) {
    out.extend(actions.drain(..).map(|a| (slot, a)));
}

/// A frame that could not be decoded, about `slots` (read leniently from it): a lost
/// trade message is a `Gap` on the trades channel; a lost book message is refused
/// (`Rejected`, with the reason) and `rebuild` starts that book again.
pub fn undecodable(
    slots: &[usize],
    trades: bool,
    detail: &str,
    mut rebuild: impl FnMut(usize, &mut Vec<Action>),
    out: &mut Vec<(usize, Action)>,
) {
    if slots.is_empty() {
        tracing::warn!(error = %detail, "undecodable frame for no known instrument");
    }
    let mut actions = Vec::new();
    for &slot in slots {
        if trades {
            actions.push(Action::status(
                Channel::Trades,
                StatusKind::Gap,
                0,
                detail.to_owned(),
            ));
        } else {
            actions.push(Action::status(
                Channel::Book,
                StatusKind::Rejected,
                0,
                detail.to_owned(),
            ));
            rebuild(slot, &mut actions);
        }
        tag(slot, &mut actions, out);
    }
}

/// What a frame tells the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Nothing.
    None,
    /// The venue will close this connection soon: open the next one now.
    Rotate,
}
